"""The Home Assistant integration is a HACS repository at the root, not a part of the Python package."""

import json
from pathlib import Path

import yaml

import emoserve

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "custom_components" / "emoserve"


def test_hacs_finds_one_integration_at_the_root_of_the_repository():
    hacs = json.loads((ROOT / "hacs.json").read_text())
    assert hacs["name"] and hacs["render_readme"] is True and hacs["homeassistant"] == "2024.3.0"
    assert [p.name for p in (ROOT / "custom_components").iterdir() if p.is_dir()] == ["emoserve"]
    manifest = json.loads((COMPONENT / "manifest.json").read_text())
    assert manifest["domain"] == COMPONENT.name
    assert {"name", "version", "documentation", "issue_tracker", "codeowners", "iot_class",
            "integration_type"} <= manifest.keys()
    assert manifest["codeowners"] and manifest["config_flow"] is True
    assert manifest["version"] == emoserve.__version__  # HACS shows it; it moves with the package's


def test_every_config_field_and_service_field_is_described_and_translated():
    strings = json.loads((COMPONENT / "strings.json").read_text())
    assert json.loads((COMPONENT / "translations" / "en.json").read_text()) == strings
    user = strings["config"]["step"]["user"]
    assert user["data"].keys() == user["data_description"].keys() == {"url", "api_key"}
    fields = yaml.safe_load((COMPONENT / "services.yaml").read_text())["analyze"]["fields"]
    assert fields.keys() == strings["services"]["analyze"]["fields"].keys() == {"config_entry_id", "file", "url"}
    assert fields["config_entry_id"]["selector"] == {"config_entry": {"integration": "emoserve"}}


def test_the_component_keeps_its_service_and_event_names():
    const = (COMPONENT / "const.py").read_text()
    assert 'DOMAIN = "emoserve"' in const and 'SERVICE_ANALYZE = "analyze"' in const
    assert 'EVENT_RESULT = "emoserve_result"' in const
    assert "analyze:" in (COMPONENT / "services.yaml").read_text()


def test_the_python_package_holds_no_home_assistant_files():
    assert not list((ROOT / "src").rglob("custom_components"))
    assert not list((ROOT / "src").rglob("manifest.json"))
