"""Home Assistant's own test harness (pytest-homeassistant-custom-component), when it is installed.

It pins Home Assistant and dozens of packages (pydantic 1, numpy 1.26, pytest 8.0, ...), so it lives
in its own venv (tests/integrations/run_isolated.sh); elsewhere these tests are not collected.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

COMPONENTS = Path(__file__).parents[3] / "custom_components"  # the repository's, HACS layout

if importlib.util.find_spec("pytest_homeassistant_custom_component") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    @pytest.fixture(autouse=True)
    def custom_integrations(enable_custom_integrations, socket_enabled):
        """Our component loads, and tests may reach the live server on 127.0.0.1 (the harness blocks sockets)."""
        import custom_components  # the harness's package (its config dir is on sys.path once `hass` exists)

        if str(COMPONENTS) not in custom_components.__path__:
            custom_components.__path__.append(str(COMPONENTS))  # Home Assistant lists every folder on it
        yield
