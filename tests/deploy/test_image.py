"""deploy/Dockerfile built and run for real, offline: a Debian base from this machine's apt mirror
(deploy/make-base-image.sh), the wheels from this machine's pip (deploy/wheelhouse/), host networking.

Skipped where no docker daemon answers: start one with
`dockerd --storage-driver vfs --iptables=false --bridge=none &` (docs/deploy.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..api.live_server import free_port
from ..polling import wait_for
from ..samples import noise, wav_bytes

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "emoserve-base:bookworm"
IMAGE = "emoserve:test"
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
CONTAINER_FS_S = 600  # creating or removing a container copies or deletes the whole image under the vfs driver


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def why_no_docker() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH (apt-get install docker.io)"
    try:
        docker("info", timeout=20)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "no docker daemon answers (start one: dockerd --storage-driver vfs --iptables=false --bridge=none)"
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0 and shutil.which("mmdebstrap") is None:
        return f"no {BASE_IMAGE} image and no mmdebstrap to make it (apt-get install mmdebstrap)"
    if sys.version_info[:2] != (3, 11):
        return "the wheelhouse is downloaded by this Python, which must be the image's (3.11)"
    return None


def torch_pin() -> str:
    """run.sh's torch pin: the wheel this machine's pip resolves it to is the one the image gets."""
    line = next(line for line in (ROOT / "run.sh").read_text().splitlines() if line.startswith("TORCH_PIN="))
    return line.split('"')[1]


def fill_wheelhouse() -> None:
    """Everything the image installs, as this machine's pip resolves it (its find-links, indexes, constraints)."""
    import tomllib  # Python 3.11+, as the image's Python (why_no_docker checks it)

    build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(WHEELHOUSE), torch_pin(),
                    *build_requires, ".[server]"], cwd=ROOT, check=True, timeout=1800)


@pytest.fixture(scope="module")
def image() -> str:
    reason = why_no_docker()
    if reason:
        pytest.skip(reason)
    subprocess.run([str(ROOT / "deploy" / "make-base-image.sh"), BASE_IMAGE], check=True, timeout=1800)
    fill_wheelhouse()
    started = time.monotonic()
    build = subprocess.run(["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                            "--build-arg", "PIP_NO_INDEX=1", "-f", "deploy/Dockerfile", "-t", IMAGE, "."],
                           cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\n{IMAGE}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture
def container(image):
    port = free_port()
    name = f"emoserve-test-{port}"
    # read-only but for the /data volume and a /tmp tmpfs, as docs/deploy.md's Kubernetes example runs it
    docker("run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "--env", "EMOSERVE_MODEL=random:tiny", "--env", f"EMOSERVE_PORT={port}", image,
           timeout=CONTAINER_FS_S)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        docker("rm", "--force", "--volumes", name, check=False, timeout=CONTAINER_FS_S)


def container_logs(container_name: str) -> str:
    logs = docker("logs", container_name, check=False)
    return logs.stdout[-3000:] + logs.stderr[-3000:]


def readyz(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_image_serves_as_a_non_root_user_turns_healthy_and_stops_cleanly(container):
    name, base = container
    wait_for(lambda: readyz(base), 180, "/readyz 200", interval=0.5, explain=lambda: container_logs(name))
    response = httpx.post(base + "/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000)))}, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == "random:tiny" and result["emotion"] in result["scores"]
    assert result["duration_s"] == pytest.approx(1.0)

    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    wait_for(lambda: docker_health(name) == "healthy", 180, "docker's HEALTHCHECK: healthy", interval=0.5,
             explain=lambda: container_logs(name))

    docker("stop", "--time", "60", name, timeout=90)
    state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
    assert state["ExitCode"] == 0, docker("logs", name).stdout[-3000:]


def docker_health(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
