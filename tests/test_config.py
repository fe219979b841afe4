"""Settings: every documented EMOSERVE_* name sets one field of its section; sections are the subsystems' options."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import re
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from emoserve.config import (
    EngineConfig,
    JobsConfig,
    LongformConfig,
    ModelConfig,
    Settings,
    StoreConfig,
    StreamConfig,
    VadConfig,
    get_settings,
    variables,
)
from emoserve.errors import InvalidParameterError
from emoserve.inference.emotion_model import EmotionModel
from emoserve.inference.engine import Engine
from emoserve.jobs.runner import JobRunner
from emoserve.jobs.store import Store
from emoserve.timeline.streaming import StreamSession

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src" / "emoserve"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_SETTINGS = {  # EMOSERVE_* names the docs mention that configure something else than the service
    "EMOSERVE_SERVER": "the server a client (CLI `analyze --server`, the Rasa action) talks to",
    "EMOSERVE_API_KEY": "that client's API key",
    "EMOSERVE_UI_SCREENSHOTS": "where tests/ui/test_browser.py writes the docs' screenshots",
    "EMOSERVE_APT_SOURCES": "the apt sources deploy/make-base-image.sh builds the Docker base image from",
    "EMOSERVE_TORCH_INDEX_URL": "the index ./run.sh installs torch from",
    "EMOSERVE_CONFIG": "the settings file (read by Settings, not a field of it)",
    "EMOSERVE_HA_ROOT": "where tests/integrations/run_isolated.sh builds the current Home Assistant's Debian root",
    "EMOSERVE_TEST_SERVER": "the live server the Home Assistant tests use when they cannot start one",
}
LIBRARY_PACKAGES = ("audio", "model", "inference", "timeline", "jobs", "client")


def documented_names() -> set[str]:
    """EMOSERVE_* names anywhere in the docs, and the names in the first column of their settings tables."""
    names = set()
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"EMOSERVE_[A-Z0-9_]*[A-Z0-9]", text))
        in_table = False
        for line in text.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
            in_table = bool(cells) and (in_table or cells[0].lower().startswith("setting"))
            if in_table and not set(cells[0]) <= set("-: "):
                names |= {name if name.startswith("EMOSERVE_") else "EMOSERVE_" + name
                          for name in re.findall(r"`([A-Z][A-Z0-9_]*[A-Z0-9])`", cells[0])}
    return names


def another_value(default) -> str:
    """A valid value for a field, as an environment variable, that differs from its default."""
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, int):
        return str(default + 1)
    if isinstance(default, float):
        return str(default / 2 if default else 1.0)
    if isinstance(default, tuple):
        return "127.0.0.0/8, ::1"
    return "3" if default is None else "elsewhere"  # int | None and Path | None; str and Path


def flat(settings: Settings) -> dict[tuple[str, ...], object]:
    return {path: functools.reduce(getattr, path, settings) for path in variables().values()}


@pytest.fixture
def clean_environment(monkeypatch):
    for name in variables():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_docs_name_settings_that_exist():
    names = documented_names()
    assert {"EMOSERVE_MAX_BATCH_SIZE", "EMOSERVE_VAD_THRESHOLD", "EMOSERVE_STREAM_HOP_S"} <= names  # the parser works
    assert not names - set(variables()) - set(NOT_SETTINGS), "documented, but no setting has these names"
    assert not set(variables()) - names, "settings the docs do not list (docs/configuration.md lists them all)"


@pytest.mark.parametrize("variable", sorted(variables()))
def test_each_variable_sets_its_field_and_no_other(clean_environment, variable):
    path = variables()[variable]
    default = functools.reduce(getattr, path, Settings())
    section = functools.reduce(getattr, path[:-1], Settings())
    choices = typing.get_args(type(section).model_fields[path[-1]].annotation)  # a Literal's allowed values
    before = flat(Settings())
    value = next((c for c in choices if isinstance(c, str) and c != default), None) or another_value(default)
    clean_environment.setenv(variable, value)
    after = flat(Settings())
    assert {p for p in before if before[p] != after[p]} == {path}


def test_names_are_the_ones_every_release_had():
    # the public contract: section fields keep the names of the flat settings they came from
    assert variables()["EMOSERVE_MAX_BATCH_SIZE"] == ("engine", "max_batch_size")
    assert variables()["EMOSERVE_VAD_THRESHOLD"] == ("longform", "vad", "threshold")
    assert variables()["EMOSERVE_UPLOAD_MAX_BYTES"] == ("store", "upload_max_bytes")
    assert variables()["EMOSERVE_API_KEYS"] == ("server", "api_keys")
    assert variables()["EMOSERVE_STREAM_HOP_S"] == ("stream", "hop_s")
    assert variables()["EMOSERVE_RAY_MAX_REPLICAS"] == ("ray", "max_replicas")


def test_variables_are_read_in_any_case_and_flat_values_win(clean_environment):
    clean_environment.setenv("emoserve_max_queue", "9")
    clean_environment.setenv("EMOSERVE_PORT", "1234")
    clean_environment.setenv("EMOSERVE_HOST", "127.0.0.2")
    settings = get_settings(port=9000, model="random:tiny", vad_threshold=0.6, ui_max_long_s=5, device=None)
    assert (settings.engine.max_queue, settings.server.port, settings.server.host) == (9, 9000, "127.0.0.2")
    assert (settings.model.model, settings.model.device) == ("random:tiny", "auto")
    assert (settings.longform.vad.threshold, settings.ui.max_long_s) == (0.6, 5)
    with pytest.raises(TypeError, match="no EMOSERVE_MAX_BATCH"):
        Settings.from_flat(max_batch=3)


def test_sections_made_in_code_ignore_the_environment(clean_environment):
    clean_environment.setenv("EMOSERVE_LONGFORM_WINDOW_S", "10")
    clean_environment.setenv("EMOSERVE_CACHE", "/elsewhere")
    assert Settings().longform.window_s == 10 and LongformConfig().window_s == 30
    assert Settings().model.cache == Path("/elsewhere") != ModelConfig().cache


def test_subsystems_take_their_sections_and_their_defaults_come_from_them():
    assert inspect.signature(Store).parameters["config"].annotation == "StoreConfig"
    runner = inspect.signature(JobRunner).parameters
    assert (runner["options"].annotation, runner["config"].annotation) == ("LongformConfig | None", "JobsConfig | None")
    stream = inspect.signature(StreamSession).parameters
    assert (stream["options"].annotation, stream["segments"].annotation) == ("StreamConfig", "LongformConfig | None")
    engine = inspect.signature(Engine).parameters
    assert {name: engine[name].default for name in EngineConfig.model_fields} == EngineConfig().model_dump()
    loading = inspect.signature(EmotionModel.from_pretrained).parameters
    defaults = ModelConfig()
    assert loading["name_or_path"].default == defaults.model and loading["cache_dir"].default == defaults.cache
    assert all(loading[name].default == getattr(defaults, name)
               for name in ("device", "dtype", "source", "quantize", "compile"))


def test_no_library_code_reads_settings_and_no_adapter_is_left():
    assert importlib.util.find_spec("emoserve.settings") is None
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "from_settings" not in text, path
        if path.relative_to(SRC).parts[0] in LIBRARY_PACKAGES:
            assert not re.search(r"import .*\b(get_settings|Settings)\b|os\.environ(\.get|\[)|getenv", text), path


def test_validators_live_in_their_section():
    with pytest.raises(ValueError, match="at most half of window_s"):
        StreamConfig(window_s=4.0, hop_s=2.5)
    with pytest.raises(ValueError, match="half the window"):
        LongformConfig(window_s=10, window_overlap_s=6)
    with pytest.raises(ValueError):
        JobsConfig(callback_allow_networks="not-a-network")
    assert JobsConfig(callback_allow_networks="127.0.0.1/8").callback_allow_networks[0].exploded == "127.0.0.0/8"
    assert StoreConfig(data_dir="somewhere").data_dir == Path("somewhere")


def test_a_toml_settings_file_sets_sections_and_the_environment_wins(clean_environment, tmp_path):
    path = tmp_path / "emoserve.toml"
    path.write_text('[model]\nmodel = "random:tiny"\n[server]\nport = 9001\nhost = "127.0.0.2"\n'
                    '[engine]\nmax_batch_size = 8\n[longform.vad]\nthreshold = 0.6\n')
    clean_environment.setenv("EMOSERVE_CONFIG", str(path))
    clean_environment.setenv("EMOSERVE_PORT", "9002")
    settings = get_settings(host="127.0.0.3")
    assert (settings.model.model, settings.server.port, settings.server.host) == ("random:tiny", 9002, "127.0.0.3")
    assert (settings.engine.max_batch_size, settings.longform.vad.threshold) == (8, 0.6)
    assert settings.longform.vad.min_speech_ms == VadConfig().min_speech_ms  # the rest of a section: its defaults


def test_a_dotenv_settings_file_takes_the_flat_names(clean_environment, tmp_path):
    path = tmp_path / ".env"
    path.write_text("EMOSERVE_MAX_QUEUE=7\nemoserve_vad_threshold=0.7\n# a comment\nEMOSERVE_API_KEYS='a, b'\n")
    clean_environment.setenv("EMOSERVE_CONFIG", str(path))
    settings = Settings()
    assert (settings.engine.max_queue, settings.longform.vad.threshold) == (7, 0.7)
    assert settings.server.keys() == ["a", "b"]


@pytest.mark.parametrize("name, text, error, message", [
    ("emoserve.toml", "[server]\nprot = 1\n", ValidationError, "server.prot"),
    ("emoserve.toml", "[server]\nport = 0\n", ValidationError, "server.port"),
    ("emoserve.toml", "[server\n", InvalidParameterError, "emoserve.toml: Expected ']'"),
    ("settings.env", "EMOSERVE_PROT=1\n", InvalidParameterError, "EMOSERVE_PROT are not settings"),
    ("missing.toml", None, InvalidParameterError, "missing.toml: no such file"),
])
def test_a_bad_settings_file_stops_the_start_naming_what_is_wrong(clean_environment, tmp_path, name, text, error,
                                                                   message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    clean_environment.setenv("EMOSERVE_CONFIG", str(path))
    with pytest.raises(error, match=message):
        Settings()


def test_secrets_never_show_and_their_users_read_them(clean_environment, tmp_path):
    clean_environment.setenv("EMOSERVE_API_KEYS", "key-one,key-two")
    clean_environment.setenv("EMOSERVE_METRICS_KEY", "scrape-secret")
    clean_environment.setenv("EMOSERVE_CALLBACK_SECRET", "hook-secret")
    settings = Settings()
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert not {"key-one", "scrape-secret", "hook-secret"} & set(re.findall(r"[a-z]+-[a-z]+", shown))
    assert settings.server.keys() == ["key-one", "key-two"]
    assert settings.server.metrics_key.get_secret_value() == "scrape-secret"
    assert settings.jobs.callback_secret.get_secret_value() == "hook-secret"
