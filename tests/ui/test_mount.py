"""The UI inside the API server (and alone): where it is mounted, what stays JSON, how API keys apply."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import emoserve.ui
from emoserve.api.app import create_app
from emoserve.cli import app as cli
from emoserve.config import Settings
from emoserve.ui import standalone_app

from ..api.conftest import wait_healthy
from ..samples import noise, wav_bytes

pytest.importorskip("gradio", reason="the web UI needs the `ui` extra")


@pytest.fixture
def make_client(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    clients = []

    def make(**overrides) -> TestClient:
        settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", ui_examples=False, **overrides)
        client = TestClient(create_app(settings, model=tiny_model), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def assets_of(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="\./(assets/[^"]+)"', page)


def test_the_server_serves_the_ui_at_slash_ui_with_its_assets(make_client):
    client = make_client()
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = assets_of(page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:  # our middleware passes Gradio's own routes through untouched
        response = client.get(f"/ui/{asset}")
        assert response.status_code == 200 and response.content and "X-Request-ID" in response.headers
    config = client.get("/ui/config").json()
    assert {c["props"].get("elem_id") for c in config["components"]} >= {"audio-input", "analyze", "timeline"}


def test_the_api_keeps_its_json_errors_beside_the_ui(make_client):
    client = make_client()
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/health").status_code in (200, 503)


def test_uploads_over_the_ui_limit_are_refused_before_they_are_kept(make_client):
    client = make_client(ui_max_upload_bytes=1000)
    assert client.post("/ui/gradio_api/upload", files={"files": ("a.wav", b"x" * 1001)}).status_code == 413
    assert client.post("/ui/gradio_api/upload", files={"files": ("a.wav", b"x" * 1000)}).status_code == 200


def test_api_only_serves_no_ui(make_client):
    client = make_client(api_only=True)
    for path in ("/", "/ui/"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_with_api_keys_the_page_asks_for_one_and_the_ui_calls_need_it(make_client):
    client = make_client(api_keys="secret-key")
    assert client.get("/ui/").status_code == 200  # the page itself (Gradio's sign-in form): never a 401
    assert client.get("/ui/config").status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert client.post("/ui/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert client.post("/ui/login", data={"username": "me", "password": "secret-key"}).json() == {"success": True}
    assert client.get("/ui/config").status_code == 200
    assert client.get("/v1/models").status_code == 401  # the UI's session is not an API key


def test_wrong_sign_ins_spend_the_failed_key_budget_of_wrong_api_keys(make_client):
    client = make_client(api_keys="secret-key", auth_failures_per_minute=3)
    assert client.post("/ui/login", data={"username": "me", "password": "wrong-1"}).status_code == 400
    assert client.get("/v1/models", headers={"X-API-Key": "wrong-2"}).status_code == 401
    assert client.post("/ui/login", data={"username": "me", "password": "wrong-3"}).status_code == 400
    refused = client.post("/ui/login", data={"username": "me", "password": "secret-key"})  # even the right key
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert client.get("/v1/models", headers={"X-API-Key": "secret-key"}).status_code == 429


def test_the_standalone_ui_throttles_wrong_sign_ins_too(tmp_path):
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", ui_examples=False,
                                  api_keys="secret-key", auth_failures_per_minute=1)
    with TestClient(standalone_app(settings)) as client:
        assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert client.post("/login", data={"username": "me", "password": "secret-key"}).status_code == 429


def analyze_over_gradio(client: TestClient, path: str, channels: str = "mix", long_file: bool = False) -> str:
    """The page's Analyze button, through Gradio's HTTP API: the summary it shows."""
    data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, "utterance", long_file, channels]
    event = client.post("/ui/gradio_api/call/analyze", json={"data": data}).json()["event_id"]
    stream = client.get(f"/ui/gradio_api/call/analyze/{event}").text
    assert "event: complete" in stream, stream
    return stream


def test_ui_analyses_spend_the_request_budget_of_api_calls(make_client):
    client = make_client(rate_limit_per_minute=2)
    wait_healthy(client)
    assert client.get("/v1/models").status_code == 200
    path = client.post("/ui/gradio_api/upload", files={"files": ("a.wav", wav_bytes(noise(16000)))}).json()[0]
    assert "emo-summary" in analyze_over_gradio(client, path)
    refused = analyze_over_gradio(client, path)
    assert "Rate limit reached; retry in" in refused and "emo-summary" not in refused
    assert client.get("/v1/models").status_code == 429


def test_the_channels_choice_splits_a_stereo_call_into_lanes(make_client):
    client = make_client()
    wait_healthy(client)
    stereo = np.stack([noise(32000, seed=1, amplitude=0.3), noise(32000, seed=2)], axis=1)
    path = client.post("/ui/gradio_api/upload", files={"files": ("call.wav", wav_bytes(stereo))}).json()[0]
    shown = analyze_over_gradio(client, path, channels="split", long_file=True)
    assert shown.count("emo-lane-name") >= 4 and "turns" in shown  # two summaries and two timeline lanes
    mixed = analyze_over_gradio(client, path)
    assert "emo-lane-name" not in mixed and "emo-summary" in mixed


def test_without_gradio_the_api_serves_and_says_how_to_get_the_ui(make_client, monkeypatch, caplog):
    monkeypatch.setattr(emoserve.ui, "ui_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="emoserve.ui"):
        client = make_client()
    assert "pip install 'emoserve[ui]'" in caplog.text and "--api-only" in caplog.text
    assert client.get("/ui/").status_code == 404
    assert client.get("/health").status_code in (200, 503)


def test_the_standalone_ui_loads_its_own_model(tmp_path):
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", ui_examples=False)
    with TestClient(standalone_app(settings)) as client:
        config = client.get("/config").json()
        assert any(c["props"].get("elem_id") == "analyze" for c in config["components"])
        service = client.app.state.service
        deadline = time.monotonic() + 30
        while service.status == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.status == "healthy" and service.engine.model.name == "random:tiny"


def test_emoserve_ui_is_a_command_on_port_7860():
    result = CliRunner().invoke(cli, ["ui", "--help"])
    assert result.exit_code == 0 and "7860" in result.output and "--model" in result.output
