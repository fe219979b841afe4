"""Real uvicorn processes on free ports: the way users run it."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ..samples import noise, wav_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(tmp_path, **env_overrides):
    port = free_port()
    env = dict(os.environ, EMOSERVE_LOG_DIR=str(tmp_path / "logs"), **env_overrides)
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
    try:
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path) as running:
        yield running


def test_a_real_server_answers_and_stops_cleanly(server, tmp_path):
    base, process = server
    response = httpx.post(base + "/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000)))}, timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "random:tiny"
    assert httpx.get(base + "/openapi.json").json()["paths"]["/v1/analyze"]["post"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    assert "POST /v1/analyze 200" in (tmp_path / "logs" / "access.log").read_text()
    assert "model random:tiny stopped" in (tmp_path / "logs" / "model_load.log").read_text()


def test_a_refused_websocket_gets_a_real_401_with_the_json_error(tmp_path):
    with running_server(tmp_path, EMOSERVE_API_KEYS="ws-key") as (base, _):
        url = base.replace("http", "ws") + "/v1/stream"
        with pytest.raises(InvalidStatus) as refused, connect(url):
            pass
        assert refused.value.response.status_code == 401
        assert b'"unauthorized"' in refused.value.response.body
        with connect(url, additional_headers={"Authorization": "Bearer ws-key"}) as ws:
            ws.send("end")
            assert '"end"' in ws.recv(timeout=30)
