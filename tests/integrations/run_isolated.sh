#!/usr/bin/env bash
# The Rasa and Home Assistant integration tests, each in its own venv (their frameworks pin packages
# that conflict with the project's: rasa-sdk pydantic<2.14 and websockets<16; Home Assistant's test
# harness pydantic 1, numpy 1.26, pytest 8.0, ...). The emoserve server they test against runs with
# the project's interpreter (EMOSERVE_SERVER_PYTHON, default .venv/bin/python). Home Assistant loads the
# component from the repository's custom_components/ (HACS layout; tests/integrations/home_assistant/conftest.py).
#
# Home Assistant is tested twice: 2024.3 (the oldest the component supports, the last for this Python 3.11)
# in a venv, and a current release, which needs Python 3.13, in a Debian trixie root (mmdebstrap, chroot;
# built once into $EMOSERVE_HA_ROOT, about 1.2 GB; skipped, saying why, without root or mmdebstrap).
#   tests/integrations/run_isolated.sh            build the venvs and the root once (PyPI, Debian), then run all
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
server_python="${EMOSERVE_SERVER_PYTHON:-.venv/bin/python}"
[[ "$server_python" == /* ]] || server_python="$root/$server_python"  # absolute, but not resolved: a venv's python is a link
venvs="${EMOSERVE_TEST_VENVS:-$HOME/.cache/emoserve/test-venvs}"
ha_root="${EMOSERVE_HA_ROOT:-$venvs/ha-current}"
ha_current="pytest-homeassistant-custom-component==0.13.316"  # Home Assistant 2026.2.3, Python >= 3.13
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

# The current Home Assistant: a Debian trixie root (its python3.13; gcc for lru-dict, which has no 3.13 wheel).
if [[ "$(id -u)" != 0 ]] || ! command -v mmdebstrap >/dev/null || ! command -v unshare >/dev/null; then
    echo "SKIPPED the current Home Assistant: its Debian root needs root, mmdebstrap and unshare" >&2
    exit 0
fi
if [[ ! -x "$ha_root/opt/ha/bin/pytest" ]]; then
    started=$SECONDS
    # --one-file-system: never into a mount left inside (rm fails there instead, and the build stops).
    rm -rf --one-file-system "$ha_root.partial"
    # In a mount namespace of its own, so the /proc, /sys and /dev it mounts inside vanish with it, even if killed.
    unshare --mount --fork -- mmdebstrap --quiet --variant=apt \
        --include=python3.13,python3.13-venv,python3.13-dev,gcc,libc6-dev,ca-certificates \
        trixie "$ha_root.partial" "${EMOSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    tests/integrations/in_root.sh "$ha_root.partial" sh -c \
        "python3.13 -m venv /opt/ha && /opt/ha/bin/pip install --quiet '$ha_current'"
    rm -rf --one-file-system "$ha_root"
    mv "$ha_root.partial" "$ha_root"  # whole or not at all: an interrupted build is not reused
    echo "built the current Home Assistant's root $ha_root in $((SECONDS - started)) s"
fi
# The server runs here (the project's venv is not in the root); the root shares this host's loopback.
"$server_python" tests/integrations/live.py tests/integrations/in_root.sh "$ha_root" \
    /opt/ha/bin/python -m pytest -q -p no:cacheprovider --confcutdir tests/integrations/home_assistant \
    -o asyncio_mode=auto tests/integrations/home_assistant
