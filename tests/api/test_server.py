"""Real uvicorn processes on free ports: the way users run it."""

import json
import signal

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from emoserve.timeline.framing import frame_count

from ..samples import SAMPLE_RATE, noise, wav_bytes
from ..test_streaming import frame_rows, pcm16
from .live_server import LiveServer


@pytest.fixture
def server(tmp_path):
    server = LiveServer(tmp_path).start()
    yield server
    server.stop()


def test_a_real_server_answers_and_stops_cleanly(server, tmp_path):
    response = httpx.post(server.url("/v1/analyze"), files={"audio_file": ("a.wav", wav_bytes(noise(16000)))},
                          timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "random:tiny"
    assert httpx.get(server.url("/openapi.json")).json()["paths"]["/v1/analyze"]["post"]
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    assert "POST /v1/analyze 200" in (tmp_path / "logs" / "access.log").read_text()
    assert "model random:tiny stopped" in (tmp_path / "logs" / "model_load.log").read_text()


def test_a_refused_websocket_gets_a_real_401_with_the_json_error(tmp_path):
    server = LiveServer(tmp_path, api_keys="ws-key").start()
    try:
        url = server.base.replace("http", "ws") + "/v1/stream"
        with pytest.raises(InvalidStatus) as refused, connect(url):
            pass
        assert refused.value.response.status_code == 401
        assert b'"unauthorized"' in refused.value.response.body
        with connect(url, additional_headers={"Authorization": "Bearer ws-key"}) as ws:
            ws.send("end")
            assert '"end"' in ws.recv(timeout=30)
    finally:
        server.stop()


def test_x_forwarded_for_counts_only_from_the_proxies_named(tmp_path):
    server = LiveServer(tmp_path, forwarded_allow_ips="127.0.0.2").start()  # not 127.0.0.1, which uvicorn trusts
    try:
        for proxy in ("127.0.0.1", "127.0.0.2"):
            with httpx.Client(transport=httpx.HTTPTransport(local_address=proxy)) as client:
                headers = {"X-Forwarded-For": "127.0.0.9", "X-Request-ID": f"req-via-{proxy}"}
                assert client.get(server.url("/v1/models"), headers=headers).status_code == 200
    finally:
        server.stop()
    access = (tmp_path / "logs" / "access.log").read_text().splitlines()
    assert "client=127.0.0.1 " in next(line for line in access if "req-via-127.0.0.1" in line)  # ignored
    assert "client=127.0.0.9 " in next(line for line in access if "req-via-127.0.0.2" in line)  # honoured


def test_a_stream_over_the_limit_gets_503_and_an_idle_one_its_results_then_4408(tmp_path):
    """The two stream bounds on a real socket: a handshake refused by HTTP, and an idle client closed."""
    server = LiveServer(tmp_path, stream_max_concurrent=1, stream_idle_timeout_s=2, stream_window_s=2,
                        stream_hop_s=0.5).start()
    try:
        url = server.base.replace("http", "ws") + "/v1/stream"
        with connect(url) as ws:
            ws.send(pcm16(noise(SAMPLE_RATE)))
            with pytest.raises(InvalidStatus) as refused, connect(url):
                pass
            ws.send(pcm16(noise(SAMPLE_RATE // 2, seed=1)))  # then nothing: the client is idle from here on
            received = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(json.loads(ws.recv(timeout=30)))
        assert refused.value.response.status_code == 503 and b'"overloaded"' in refused.value.response.body
        assert refused.value.response.headers["Retry-After"] == "1"
        assert received[0]["type"] == "error" and received[0]["code"] == "idle_timeout"
        assert received[-1] == {"type": "end"}
        assert len(frame_rows(received)) == frame_count(SAMPLE_RATE * 3 // 2)  # its audio was all analysed
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4408, "idle_timeout")
    finally:
        server.stop()
