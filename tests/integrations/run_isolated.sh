#!/usr/bin/env bash
# The Rasa and Home Assistant integration tests, each in its own venv (their frameworks pin packages
# that conflict with the project's: rasa-sdk pydantic<2.14 and websockets<16; Home Assistant's test
# harness pydantic 1, numpy 1.26, pytest 8.0, ...). The emoserve server they test against runs with
# the project's interpreter (EMOSERVE_SERVER_PYTHON, default .venv/bin/python). Home Assistant loads the
# component from the repository's custom_components/ (HACS layout; tests/integrations/home_assistant/conftest.py).
#   tests/integrations/run_isolated.sh            build the venvs once (PyPI), then run both suites
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
server_python="${EMOSERVE_SERVER_PYTHON:-.venv/bin/python}"
[[ "$server_python" == /* ]] || server_python="$root/$server_python"  # absolute, but not resolved: a venv's python is a link
venvs="${EMOSERVE_TEST_VENVS:-$HOME/.cache/emoserve/test-venvs}"
mkdir -p "$venvs"

if [[ ! -x "$venvs/ha/bin/pytest" ]]; then
    python3 -m venv "$venvs/ha"
    "$venvs/ha/bin/pip" install --quiet "pytest-homeassistant-custom-component==0.13.109"  # Home Assistant 2024.3.3
fi
if [[ ! -x "$venvs/rasa/bin/pytest" ]]; then
    python3 -m venv "$venvs/rasa"
    "$venvs/rasa/bin/pip" install --quiet "rasa-sdk==3.21.1" pytest
fi
# rasa-sdk's pins first, then this checkout's venv for the rest (torch, httpx, numpy, soundfile, ...).
# Written on every run: the cached venv may have been built for another checkout.
site="$("$venvs/rasa/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$server_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz-emoserve-project.pth"

export PYTHONPATH="$root/src" EMOSERVE_SERVER_PYTHON="$server_python"
"$venvs/rasa/bin/python" -m pytest -q -p no:cacheprovider tests/integrations/test_rasa.py
"$venvs/ha/bin/python" -m pytest -q -p no:cacheprovider --confcutdir tests/integrations/home_assistant \
    -o asyncio_mode=auto tests/integrations/home_assistant
