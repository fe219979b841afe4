"""`emoserve serve` and `emoserve ui`: the options they give uvicorn."""

from __future__ import annotations

import importlib.util

import pytest
import uvicorn
from typer.testing import CliRunner

from emoserve.cli import app
from emoserve.cli.common import uvicorn_options
from emoserve.config import ServerConfig, Settings


def test_proxy_headers_are_trusted_from_no_one_unless_proxies_are_named():
    default = uvicorn_options(ServerConfig())
    assert default["proxy_headers"] is False and "forwarded_allow_ips" not in default
    named = uvicorn_options(ServerConfig(forwarded_allow_ips=" 127.0.0.1,127.0.0.2 "))
    assert named["proxy_headers"] is True and named["forwarded_allow_ips"] == "127.0.0.1,127.0.0.2"
    assert uvicorn.Config(lambda: None, **default).proxy_headers is False
    assert uvicorn.Config(lambda: None, **named).proxy_headers is True


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_the_server_commands_run_uvicorn_with_these_options(monkeypatch, tmp_path, command):
    if command == "ui":
        pytest.importorskip("gradio", reason="`emoserve ui` needs the `ui` extra")
    monkeypatch.setenv("EMOSERVE_FORWARDED_ALLOW_IPS", "127.0.0.1")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    result = CliRunner().invoke(app, [command, "--model", "random:tiny", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls == [uvicorn_options(Settings.from_flat(port=8123).server)]
    assert calls[0]["proxy_headers"] is True and calls[0]["forwarded_allow_ips"] == "127.0.0.1"


@pytest.mark.parametrize("command", [["serve"], ["ui"], ["bench", "--quick"], ["models", "list"],
                                     ["analyze", "--model", "random:tiny", "clip.wav"]])
def test_commands_that_run_the_model_say_how_to_install_the_server(monkeypatch, command):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert "torch missing): pip install 'emoserve[server]'" in " ".join(result.output.split())
