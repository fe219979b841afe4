"""The package as users install it: the base install (`pip install emoserve`) is the light client, its
dependency floors are true, and it carries its version, license and type information.

Each slow test builds a venv with this checkout installed without extras (this machine's pip configuration:
its local indexes and PyPI) and runs the client and the CLI's remote mode against a real
`emoserve serve --model random:tiny` started from the project's venv: once with the newest releases pip
picks, once with every base dependency at its declared floor.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import emoserve
from emoserve.cli.common import SERVER_MODULES

from .api.live_server import LiveServer
from .samples import noise, sweep, wav_bytes

REPO = Path(__file__).resolve().parent.parent
HEAVY = (*SERVER_MODULES, "starlette", "soxr", "onnxruntime", "silero_vad", "modelscope", "huggingface_hub", "gradio")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

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

import os, pathlib
from emoserve.config import Settings
settings_file = pathlib.Path(resume_dir).parent / "emoserve.toml"  # the settings file merges with the environment
settings_file.write_text("[server]\\nport = 9001\\n[longform.vad]\\nthreshold = 0.6\\n")
os.environ.update(EMOSERVE_CONFIG=str(settings_file), EMOSERVE_VAD_MIN_SPEECH_MS="5", EMOSERVE_API_KEYS="k")
settings = Settings()
assert (settings.server.port, settings.longform.vad.threshold, settings.longform.vad.min_speech_ms) == (9001, 0.6, 5)
assert settings.server.keys() == ["k"] and "k" not in repr(settings.server.api_keys)
print("light client ok")
"""
PACKAGE_SNIPPET = """
import importlib.metadata as metadata, pathlib, emoserve
dist = metadata.distribution("emoserve")
assert dist.version == emoserve.__version__, (dist.version, emoserve.__version__)
assert (pathlib.Path(emoserve.__file__).parent / "py.typed").is_file(), "py.typed is not in the wheel"
assert any(pathlib.PurePath(str(f)).name == "LICENSE" for f in dist.files), "LICENSE is not in the wheel"
assert any(url.startswith("Issues, https://") for url in dist.metadata.get_all("Project-URL")), dist.metadata
print("package ok")
"""


def floors(requirements: list[str]) -> list[str]:
    """`name>=X` → `name==X` for each requirement that applies to this Python."""
    pins = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        floor = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert floor, f"{text} declares no floor"
        pins.append(f"{requirement.name}=={floor[0]}")
    return pins


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
    package = run(bin_dir, "python", "-c", PACKAGE_SNIPPET)
    assert package.returncode == 0 and "package ok" in package.stdout, package.stdout + package.stderr
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


@pytest.mark.slow
def test_the_light_client_works_with_every_base_dependency_at_its_floor(tmp_path, server, clip):
    pins = floors(PROJECT["dependencies"])
    bin_dir = make_venv(tmp_path / "venv", *pins)
    freeze = run(bin_dir, "python", "-m", "pip", "freeze").stdout
    installed = dict(line.lower().replace("_", "-").split("==") for line in freeze.splitlines() if "==" in line)
    for pin in map(Requirement, pins):
        assert pin.specifier.contains(installed[pin.name.lower()]), (pin, freeze)
    check_light_install(bin_dir, server, clip, tmp_path)


def test_floors_are_the_releases_the_code_needs():
    declared = {Requirement(text).name.lower(): Requirement(text).specifier
                for text in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["server"]}
    assert "12.3" not in declared["av"] and "13.0" in declared["av"]  # AudioLayout.nb_channels
    assert "0.0.17" not in declared["python-multipart"] and "0.0.18" in declared["python-multipart"]
    assert not {"torch", "fastapi", "av", "soundfile", "uvicorn"} & set(map(str.lower, (
        Requirement(text).name for text in PROJECT["dependencies"])))
    assert all(re.match(r"emoserve\[server\]$", extra[0]) for name, extra in PROJECT["optional-dependencies"].items()
               if name in ("ui", "ray"))


def test_version_has_one_source():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    hatch = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["version"]
    assert (REPO / hatch["path"]) == Path(emoserve.__file__)
    assert re.fullmatch(r"\d+\.\d+\.\d+", emoserve.__version__)
    assert f"## [{emoserve.__version__}]" in (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert (REPO / "src" / "emoserve" / "py.typed").is_file() and "MIT License" in (REPO / "LICENSE").read_text()
