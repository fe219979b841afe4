#!/usr/bin/env bash
# emoserve in two commands:
#   ./run.sh              set up (once), pull the default model (once), start the service
#   ./run.sh --api-only   the same, without the web UI
#   ./run.sh test [ARGS]  set up (once), then the full test suite (ARGS go to pytest; without ARGS the
#                         Rasa and Home Assistant integration suites run too, in venvs of their own)
# Idempotent: a second run skips what is already done.
# EMOSERVE_TORCH_INDEX_URL: the package index torch comes from (e.g. PyTorch's CPU-only or CUDA index, README);
# default: pip's own configuration.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${EMOSERVE_VENV:-.venv}"
PY="$VENV/bin/python"
TORCH_PIN="torch==2.13.0"       # installed first: an unpinned torch pulls a multi-GB CUDA build
FUNASR_PIN="funasr==1.4.16"     # the reference implementation, for parity tests and benchmarks only

mode="serve"
if [[ "${1:-}" == "test" ]]; then mode="test"; shift; fi

extras="server,ui"
[[ "$mode" == "test" ]] && extras="server,ui,dev,ray"
torch_index=()
[[ -n "${EMOSERVE_TORCH_INDEX_URL:-}" ]] && torch_index=(--index-url "$EMOSERVE_TORCH_INDEX_URL")

if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
fi

stamp="$VENV/.emoserve-installed-$extras"
fingerprint="$( (cat pyproject.toml run.sh; echo "${EMOSERVE_TORCH_INDEX_URL:-}") | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$fingerprint" ]]; then
    "$PY" -m pip install --quiet "${torch_index[@]}" "$TORCH_PIN"
    "$PY" -m pip install --quiet -e ".[$extras]"
    if [[ "$mode" == "test" ]]; then
        # FunASR declares no torch dependency but a heavy list of others; emotion2vec needs none of them
        "$PY" -m pip install --quiet --no-deps "$FUNASR_PIN" lazy_loader
    fi
    echo "$fingerprint" > "$stamp"
fi

if [[ "$mode" == "test" ]]; then
    "$PY" -m pytest "$@"
    if [[ $# -eq 0 ]]; then
        # the full suite: Rasa and Home Assistant pin packages that conflict with ours, so their
        # integration tests run in venvs of their own (built once, then reused)
        EMOSERVE_SERVER_PYTHON="$PY" bash tests/integrations/run_isolated.sh
    fi
    exit 0
fi

model="${EMOSERVE_MODEL:-emotion2vec_plus_large}"
if [[ "$model" != random:* && ! -d "$model" ]]; then
    "$VENV/bin/emoserve" models pull "$model"
fi
exec "$VENV/bin/emoserve" serve "$@"
