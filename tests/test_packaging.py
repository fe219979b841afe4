"""The base install (`pip install emoserve`, no extras) is the light client: clean venvs prove it.

Each slow test builds a venv with this checkout installed without extras (this machine's pip configuration,
so it works offline from the local indexes as well as from PyPI) and runs the client and the CLI's remote
mode against a real `emoserve serve --model random:tiny` started from the project's venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emoserve.cli.common import SERVER_MODULES

from .api.live_server import LiveServer
from .samples import noise, sweep, wav_bytes

REPO = Path(__file__).resolve().parent.parent
HEAVY = (*SERVER_MODULES, "starlette", "soxr", "onnxruntime", "silero_vad", "modelscope", "huggingface_hub", "gradio")

CLIENT_SNIPPET = """
import sys
import numpy as np
from emoserve.client import EmoClient

server, clip, resume_dir, heavy = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
with EmoClient(server, resume_dir=resume_dir) as client:
    results = [client.analyze(clip), client.analyze(clip, preconvert=True),  # no decoders here: sent as it is
               client.analyze(np.zeros(16000, dtype=np.float32), granularity="frame")]
assert all(r.model == "random:tiny" and r.emotion in r.labels for r in results), results
assert results[0].scores == results[1].scores
assert results[2].granularity == "frame" and results[2].scores.ndim == 2
loaded = sorted(set(heavy) & set(sys.modules))
assert not loaded, loaded
print("light client ok")
"""


def without_project_path() -> dict[str, str]:
    """The environment less PYTHONPATH and VIRTUAL_ENV: a venv then sees only what was installed into it."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def make_venv(root: Path, *pins: str) -> Path:
    """A fresh venv with this checkout installed without extras (and `pins` beside it); its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    bin_dir = root / "bin"
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(REPO), *pins],
                             env=without_project_path(), capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    return bin_dir


def run(bin_dir: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / command[0]), *command[1:]], env=without_project_path(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("packaging-server")).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packaging-clip") / "clip.wav"
    path.write_bytes(wav_bytes(sweep(1.0) + noise(16000, seed=2)))
    return path


def check_light_install(bin_dir: Path, server: LiveServer, clip: Path, tmp_path: Path) -> None:
    """The client and `emoserve analyze --server` work; nothing of the server install is there or imported."""
    absent = run(bin_dir, "python", "-c", "import importlib.util as u, sys; "
                                          "sys.exit(any(u.find_spec(m) for m in sys.argv[1:]))", *SERVER_MODULES)
    assert absent.returncode == 0, f"the base install brought one of {SERVER_MODULES}"
    snippet = run(bin_dir, "python", "-c", CLIENT_SNIPPET, server.base, str(clip), str(tmp_path / "resume"),
                  ",".join(HEAVY))
    assert snippet.returncode == 0 and "light client ok" in snippet.stdout, snippet.stdout + snippet.stderr
    assert run(bin_dir, "emoserve", "--help").returncode == 0
    output = tmp_path / "results.jsonl"
    analyzed = run(bin_dir, "emoserve", "analyze", "--server", server.base, str(clip), "--output", str(output))
    assert analyzed.returncode == 0, analyzed.stdout + analyzed.stderr
    assert '"model": "random:tiny"' in output.read_text()
    serve = run(bin_dir, "emoserve", "serve", "--model", "random:tiny")
    assert serve.returncode == 1 and "pip install 'emoserve[server]'" in serve.stderr, serve.stderr


@pytest.mark.slow
def test_the_base_install_is_the_light_client(tmp_path, server, clip):
    check_light_install(make_venv(tmp_path / "venv"), server, clip, tmp_path)
