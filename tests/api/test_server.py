"""One real uvicorn process on a free port: the way users run it."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ..samples import noise, wav_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = dict(os.environ, EMOSERVE_LOG_DIR=str(tmp_path / "logs"), EMOSERVE_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen([sys.executable, "-m", "emoserve", "serve", "--model", "random:tiny", "--port",
                                str(port), "--api-only"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("server did not become healthy")
    yield base, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_a_real_server_answers_and_stops_cleanly(server, tmp_path):
    base, process = server
    response = httpx.post(base + "/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000)))}, timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "random:tiny"
    assert httpx.get(base + "/openapi.json").json()["paths"]["/v1/analyze"]["post"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    assert "POST /v1/analyze 200" in (tmp_path / "logs" / "access.log").read_text()
    assert "model random:tiny stopped" in (tmp_path / "logs" / "model_load.log").read_text()
