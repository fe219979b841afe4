"""The conventions HTTP tools and browsers expect: security schemes in OpenAPI, WebSocket keys a browser can
send, `Accept` with q-values, request ids on every log line, uvicorn's own lines in JSON."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.concurrency import run_in_threadpool
from starlette.testclient import WebSocketDenialResponse

from emoserve.api.negotiation import negotiate, quality
from emoserve.logs import JsonFormatter, TextFormatter

from ..samples import noise, sweep, wav_bytes
from ..test_streaming import pcm16
from .live_server import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
KEY_HEADERS = [{"Authorization": "Bearer the-key"}, {"X-API-Key": "the-key"}]


# ---- OpenAPI security schemes ----


def test_openapi_declares_how_keys_are_sent_on_the_routes_that_need_them(make_client):
    schema = make_client(api_keys="the-key", metrics_key="scrape").get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("apiKey", "header",
                                                                                              "X-API-Key")
    either = [{"bearer": []}, {"apiKey": []}]
    paths = schema["paths"]
    assert paths["/v1/analyze"]["post"]["security"] == either and paths["/v1/upload/init"]["post"]["security"] == either
    assert paths["/metrics"]["get"]["security"] == either
    assert "security" not in paths["/health"]["get"]


def test_without_keys_the_schema_asks_for_none(make_client):
    schema = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert not any("security" in op for operations in schema["paths"].values() for op in operations.values())


@pytest.mark.parametrize("headers", KEY_HEADERS)
def test_each_declared_scheme_opens_the_api(make_client, headers):
    # what the /docs Authorize button sends for each scheme
    client = make_client(api_keys="the-key")
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert "swagger-ui" in client.get("/docs").text


# ---- WebSocket keys from browsers ----


def stream_types(ws) -> list[str]:
    ws.send_bytes(pcm16(noise(8_000)))
    ws.send_text("end")
    types = []
    while not types or types[-1] != "end":
        types.append(ws.receive_json()["type"])
    return types


def test_a_browser_sends_its_key_as_a_subprotocol_and_gets_emoserve_back(make_client):
    client = make_client(api_keys="the-key")
    with client.websocket_connect("/v1/stream", subprotocols=["emoserve", "emoserve.key.the-key"]) as ws:
        assert ws.accepted_subprotocol == "emoserve"  # never the key
        assert stream_types(ws)[-1] == "end"
    for protocols in (["emoserve", "emoserve.key.wrong"], ["emoserve"]):
        with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/v1/stream",
                                                                                          subprotocols=protocols):
            pass
        assert refused.value.status_code == 401


def test_the_key_subprotocol_opens_websockets_only(make_client):
    client = make_client(api_keys="the-key")
    assert client.get("/v1/models", headers={"Sec-WebSocket-Protocol": "emoserve.key.the-key"}).status_code == 401


def test_streams_without_auth_echo_emoserve_or_nothing(make_client):
    client = make_client()
    with client.websocket_connect("/v1/stream", subprotocols=["emoserve"]) as ws:
        assert ws.accepted_subprotocol == "emoserve"
    with client.websocket_connect("/v1/stream") as ws:
        assert ws.accepted_subprotocol is None


BROWSER_STREAM = """async ([url, protocols]) => await new Promise((resolve) => {
    const ws = new WebSocket(url, protocols);
    const types = [];
    ws.onopen = () => {
        const pcm = new Int16Array(16000);
        for (let i = 0; i < pcm.length; i++) pcm[i] = Math.round(8000 * Math.sin(2 * Math.PI * 440 * i / 16000));
        ws.send(pcm.buffer);
        ws.send("end");
    };
    ws.onmessage = (event) => types.push(JSON.parse(event.data).type);
    ws.onclose = (event) => resolve({code: event.code, protocol: ws.protocol, types: types});
})"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")
def test_chromium_streams_with_its_key_in_the_subprotocol(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the dev extra)")
    server = LiveServer(tmp_path, api_keys="browser-key").start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
            page = browser.new_page()
            page.goto(server.url("/health"))
            url = server.base.replace("http", "ws") + "/v1/stream"
            accepted = page.evaluate(BROWSER_STREAM, [url, ["emoserve", "emoserve.key.browser-key"]])
            refused = page.evaluate(BROWSER_STREAM, [url, ["emoserve", "emoserve.key.wrong-key"]])
            browser.close()
    finally:
        server.stop()
    assert accepted["protocol"] == "emoserve" and accepted["code"] == 1000 and accepted["types"][-1] == "end"
    assert refused["types"] == [] and refused["code"] == 1006  # the handshake's 401: no connection


# ---- Accept with q-values ----


@pytest.mark.parametrize("accept, chosen", [
    (None, "multipart/mixed"),
    ("", "multipart/mixed"),
    ("*/*", "multipart/mixed"),
    ("application/json", "application/json"),
    ("multipart/mixed, application/json", "multipart/mixed"),
    ("application/json, multipart/mixed;q=0.5", "application/json"),
    ("multipart/mixed;q=0.2, application/json;q=0.9", "application/json"),
    ("application/json;q=0.3, multipart/*", "multipart/mixed"),
    ("application/*", "application/json"),
    ("*/*;q=0.1, application/json;q=0.2", "application/json"),
    ("application/json;q=0, */*", "multipart/mixed"),
    ("text/html", "multipart/mixed"),  # nothing acceptable: answered as if there were no Accept
    ("application/json;q=2, multipart/mixed;q=0.5", "multipart/mixed"),  # a malformed q-value: that range ignored
    ("APPLICATION/JSON ; Q=0.8 , multipart/mixed ; q=0.4", "application/json"),
])
def test_negotiation_honours_q_values(accept, chosen):
    assert negotiate(accept, ("multipart/mixed", "application/json")) == chosen


def test_the_most_specific_range_decides():
    assert quality("*/*;q=0.9, application/*;q=0.5, application/json;q=0.1", "application/json") == 0.1
    assert quality("*/*;q=0.9, application/*;q=0.5", "application/json") == 0.5
    assert quality("text/*", "application/json") == 0.0


@pytest.mark.parametrize("accept, json_answer", [
    ("application/json, multipart/mixed;q=0.5", True),
    ("multipart/mixed;q=0.5, application/json;q=0.6", True),
    ("application/json;q=0.5, multipart/mixed", False),
    ("*/*", False),
])
def test_analyze_answers_in_the_preferred_type(make_client, accept, json_answer):
    client = make_client()
    response = client.post("/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(sweep(1.0)), "audio/wav")},
                           data={"return_embedding": "true"}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json" if json_answer else "multipart/mixed")


# ---- request ids on every log line ----


def test_every_log_line_of_a_request_names_its_request_id(make_client):
    client: TestClient = make_client()
    text, lines = [], []  # formatted as a handler does: when the line is logged
    handler = logging.Handler()
    handler.emit = lambda record: (text.append(TextFormatter().format(record)),
                                   lines.append(json.loads(JsonFormatter().format(record))))
    log = logging.getLogger("emoserve.test_conventions")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def logs_a_line():
        log.info("in the handler")
        await run_in_threadpool(log.info, "in a worker thread")
        return {}

    client.app.add_api_route("/v1/test-logs", logs_a_line)
    try:
        assert client.get("/v1/test-logs", headers={"X-Request-ID": "req-42"}).status_code == 200
        log.info("outside any request")
    finally:
        log.removeHandler(handler)
    assert [line.get("request_id") for line in lines] == ["req-42", "req-42", None]
    assert text[0].endswith("in the handler request_id=req-42") and "request_id" not in text[2]


# ---- uvicorn's own lines ----


def test_uvicorn_logs_json_lines_when_json_logs_are_on(tmp_path):
    server = LiveServer(tmp_path, log_json="true").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn itself logs a warning about it
            raw.recv(1024)
        deadline = time.monotonic() + 10
        while "Invalid HTTP request" not in (tmp_path / "server.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    lines = (tmp_path / "server.out").read_text().splitlines()
    warning = next(line for line in lines if "Invalid HTTP request" in line)
    entry = json.loads(warning)
    assert (entry["logger"], entry["level"]) == ("uvicorn.error", "WARNING")
