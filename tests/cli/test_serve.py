"""`emoserve serve` and `emoserve ui`: the options they give uvicorn, and how a real `serve` process ends."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from emoserve.cli import app
from emoserve.cli.common import uvicorn_options
from emoserve.config import ServerConfig, Settings

from ..api.live_server import LiveServer, free_port
from ..samples import noise, wav_bytes


def test_proxy_headers_are_trusted_from_no_one_unless_proxies_are_named():
    default = uvicorn_options(ServerConfig())
    assert default["proxy_headers"] is False and "forwarded_allow_ips" not in default
    named = uvicorn_options(ServerConfig(forwarded_allow_ips=" 127.0.0.1,127.0.0.2 "))
    assert named["proxy_headers"] is True and named["forwarded_allow_ips"] == "127.0.0.1,127.0.0.2"
    assert uvicorn.Config(lambda: None, **default).proxy_headers is False
    assert uvicorn.Config(lambda: None, **named).proxy_headers is True


def test_the_shutdown_timeout_is_uvicorns_graceful_drain(monkeypatch):
    monkeypatch.setenv("EMOSERVE_SHUTDOWN_TIMEOUT_S", "7.5")
    options = uvicorn_options(Settings().server)
    assert uvicorn.Config(lambda: None, **options).timeout_graceful_shutdown == 7.5

@pytest.mark.parametrize("command", ["serve", "ui"])
def test_the_server_commands_run_uvicorn_with_these_options(monkeypatch, tmp_path, command):
    if command == "ui":
        pytest.importorskip("gradio", reason="`emoserve ui` needs the `ui` extra")
    monkeypatch.setenv("EMOSERVE_FORWARDED_ALLOW_IPS", "127.0.0.1")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))  # `ui`
    config = uvicorn.Config  # `serve` runs its own uvicorn.Server, to end with the status that says why
    monkeypatch.setattr(uvicorn, "Config", lambda app, **options: calls.append(options) or config(app, **options))
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: None)
    result = CliRunner().invoke(app, [command, "--model", "random:tiny", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls == [uvicorn_options(Settings.from_flat(port=8123).server)]
    assert calls[0]["proxy_headers"] is True and calls[0]["forwarded_allow_ips"] == "127.0.0.1"


def test_serve_exits_1_and_says_why_when_the_model_cannot_load(tmp_path):
    command = [sys.executable, "-m", "emoserve", "serve", "--model", "/nonexistent/dir", "--port", str(free_port()),
               "--api-only"]
    env = {**os.environ, "EMOSERVE_LOG_DIR": str(tmp_path / "logs"), "EMOSERVE_DATA_DIR": str(tmp_path / "data")}
    ended = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    output = ended.stdout + ended.stderr
    assert ended.returncode == 1, output
    assert "failed to load" in output and "/nonexistent/dir does not exist" in output


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(tmp_path):
    server = LiveServer(tmp_path).start()
    try:
        clip = wav_bytes(noise(16000))
        request = httpx.Request("POST", server.url("/v1/analyze"), files={"audio_file": ("a.wav", clip)})
        body = request.read()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
            # `Expect: 100-continue`: the server answers 100 once the app reads the body, so the request is in flight
            head = (f"POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                    f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n")
            connection.sendall(head.encode())
            assert connection.recv(100).startswith(b"HTTP/1.1 100 Continue")
            server.process.send_signal(signal.SIGTERM)
            wait_until_refused(server.port)  # the drain has begun: the listening socket is closed
            connection.sendall(body)
            status, answer = read_response(connection)
        assert status == 200 and answer["model"] == "random:tiny" and answer["scores"]
        assert server.process.wait(60) == 0, (tmp_path / "server.out").read_text()
    finally:
        server.stop()



def wait_until_refused(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the server kept accepting connections after SIGTERM")


def read_response(connection: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on `connection` (the server closes it after: it is stopping)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("command", [["serve"], ["ui"], ["bench", "--quick"], ["models", "list"],
                                     ["analyze", "--model", "random:tiny", "clip.wav"]])
def test_commands_that_run_the_model_say_how_to_install_the_server(monkeypatch, command):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert "torch missing): pip install 'emoserve[server]'" in " ".join(result.output.split())
