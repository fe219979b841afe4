"""WebSocket /v1/stream end to end through the app (random:tiny): messages, errors, auth, limits, disconnects."""

import asyncio
import threading

import numpy as np
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from emoserve import LABELS, EmotionModel
from emoserve.runtime import Service
from emoserve.timeline.framing import frame_count

from ..samples import SAMPLE_RATE, conversation, espeak_available, noise, sweep, tone
from ..test_streaming import chunks, frame_rows, heard, pcm16
from .test_middleware import metric

STREAM = dict(stream_window_s=2.0, stream_hop_s=0.5)


def stream(client, messages, headers=None) -> list[dict]:
    """Send the messages and "end"; return everything the server sent up to its "end"."""
    with client.websocket_connect("/v1/stream", headers=headers or {}) as ws:
        for message in messages:
            ws.send_bytes(message)
        ws.send_text("end")
        received = []
        while not received or received[-1]["type"] != "end":
            received.append(ws.receive_json())
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
    return received


def test_frames_arrive_on_one_continuous_grid_then_end(make_client, tiny_model):
    client = make_client(**STREAM)
    pcm = pcm16(np.concatenate([sweep(2.7), noise(SAMPLE_RATE * 2 + 99, seed=2)]))
    received = stream(client, chunks(pcm, [6_400]))
    assert received[-1] == {"type": "end"}
    frames = [m for m in received if m["type"] == "frames"]
    assert len(frames) >= 5 and all(len(row) == len(LABELS) for m in frames for row in m["scores"])
    rows = frame_rows(received)
    assert len(rows) == frame_count(len(pcm) // 2)
    whole = tiny_model.predict([heard(pcm)], frames=True)[0].frame_probs
    assert np.abs(rows - whole).max() < 0.05  # windows of 2 s, not the whole clip: see docs/streaming.md


def test_odd_and_tiny_messages_give_the_same_stream(make_client):
    client = make_client(**STREAM)
    pcm = pcm16(np.concatenate([tone(1.5), noise(SAMPLE_RATE * 2, seed=4)]))
    whole = stream(client, [pcm])
    pieces = stream(client, chunks(pcm, [1, 3, 7, 1_001, 333, 12_345]))
    np.testing.assert_allclose(frame_rows(pieces), frame_rows(whole), atol=1e-6)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_utterances_for_speech_between_silences(make_client):
    client = make_client(**STREAM)
    wav, regions = conversation([1.2, 1.5, 0.8], seed=5)
    received = stream(client, chunks(pcm16(wav), [3_200]))
    utterances = [m for m in received if m["type"] == "utterance"]
    assert len(utterances) == len(regions)
    for message, (start, end) in zip(utterances, regions):
        assert abs(message["start"] - start) < 0.35 and abs(message["end"] - end) < 0.35
        assert message["emotion"] in LABELS and list(message["scores"]) == list(LABELS)
        assert message["confidence"] == max(message["scores"].values())
    assert len(frame_rows(received)) == frame_count(len(wav))


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_end_closes_the_utterance_still_open(make_client):
    client = make_client(**STREAM)
    wav, regions = conversation([0.5, 0.0], seed=6)  # speech to the very end: no trailing silence
    received = stream(client, [pcm16(wav)])
    utterances = [m for m in received if m["type"] == "utterance"]
    assert len(utterances) == 1 and utterances[0]["end"] == pytest.approx(len(wav) / SAMPLE_RATE)
    assert received.index(utterances[0]) < len(received) - 1


def test_keys_are_required_when_configured(make_client):
    client = make_client(api_keys="stream-key", **STREAM)
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/v1/stream"):
        pass
    assert refused.value.status_code == 401 and refused.value.json()["error"]["code"] == "unauthorized"
    assert stream(client, [pcm16(noise(8_000))], headers={"Authorization": "Bearer stream-key"})[-1]["type"] == "end"


def test_bad_messages_get_an_error_and_the_stream_goes_on(make_client):
    client = make_client(**STREAM)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(pcm16(noise(SAMPLE_RATE, seed=1)))
        for text in ("hello", '{"type": "end"}', ""):
            ws.send_text(text)
            error = ws.receive_json()
            assert error["type"] == "error" and error["code"] == "invalid_parameter" and "end" in error["message"]
        ws.send_bytes(pcm16(noise(SAMPLE_RATE, seed=2)))
        ws.send_text("end")
        received = [ws.receive_json()]
        while received[-1]["type"] != "end":
            received.append(ws.receive_json())
    assert len(frame_rows(received)) == frame_count(2 * SAMPLE_RATE)


def test_a_client_that_leaves_mid_stream_leaves_the_server_healthy(make_client):
    client = make_client(**STREAM)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(pcm16(noise(SAMPLE_RATE * 6, seed=3)))
    stats = client.app.state.service.engine.stats
    for _ in range(500):
        if stats.completed + stats.cancelled + stats.failed == stats.submitted:
            break
        threading.Event().wait(0.01)
    assert stats.completed + stats.cancelled + stats.failed == stats.submitted
    assert stats.submitted <= 3  # of the 9 windows in 6 s: the rest were never sent to the engine
    assert client.get("/health").status_code == 200
    assert stream(client, [pcm16(noise(SAMPLE_RATE))])[-1]["type"] == "end"


def test_the_duration_limit_analyses_what_came_before_it_and_closes(make_client):
    client = make_client(stream_max_duration_s=1.5, **STREAM)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(pcm16(noise(SAMPLE_RATE)))
        ws.send_bytes(pcm16(noise(SAMPLE_RATE)))
        received = [ws.receive_json()]
        while received[-1]["type"] != "end":
            received.append(ws.receive_json())
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert received[0]["type"] == "error" and received[0]["code"] == "audio_too_long"
    assert len(frame_rows(received)) == frame_count(int(1.5 * SAMPLE_RATE))
    assert (closed.value.code, closed.value.reason) == (4413, "audio_too_long")


def test_a_message_larger_than_the_buffer_is_refused(make_client):
    client = make_client(stream_max_buffer_s=1.0, **STREAM)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(bytes(2 * SAMPLE_RATE + 2))
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["code"] == "payload_too_large" and closed.value.code == 4413


def test_a_stream_before_the_model_is_ready_is_closed_with_the_reason(make_client, monkeypatch):
    async def never_loads(self, model=None):
        await asyncio.Event().wait()

    monkeypatch.setattr(Service, "load", never_loads)
    client = make_client(model=None)
    with client.websocket_connect("/v1/stream") as ws:
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["code"] == "model_loading" and error["retry_after"] >= 1
    assert (closed.value.code, closed.value.reason) == (4503, "model_loading")
    assert client.get("/health").json()["status"] == "loading"


def test_streams_count_in_metrics_and_the_access_log(make_client, tmp_path):
    client = make_client(**STREAM)
    before = client.get("/metrics").text
    stream(client, [pcm16(noise(2 * SAMPLE_RATE))], headers={"X-Request-ID": "stream-7"})
    after = client.get("/metrics").text
    assert metric(after, "emoserve_audio_seconds_total") == metric(before, "emoserve_audio_seconds_total") + 2.0
    accepted = dict(route="/v1/stream", method="WS", status="101")
    assert metric(after, "emoserve_requests_total", **accepted) == metric(before, "emoserve_requests_total",
                                                                          **accepted) + 1
    log = (tmp_path / "logs" / "access.log").read_text()
    assert "WS /v1/stream 101" in log and "request_id=stream-7" in log and "audio_s=2.0" in log


def test_a_model_failure_is_an_error_message_and_a_close(make_client):
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")
    predict = model.predict

    def broken(waveforms, frames=False):
        outputs = predict(waveforms, frames=frames)
        for out in outputs:
            out.embedding[:] = np.nan
        return outputs

    client = make_client(model=model, **STREAM)
    model.predict = broken  # after the warm-up
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(pcm16(noise(3 * SAMPLE_RATE)))
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["type"] == "error" and error["code"] == "internal_error"
    assert (closed.value.code, closed.value.reason) == (4500, "internal_error")
    assert client.get("/health").status_code == 200


def test_streams_over_the_limit_are_refused_at_the_handshake_until_one_ends(make_client):
    client = make_client(stream_max_concurrent=2, **STREAM)
    with client.websocket_connect("/v1/stream"), client.websocket_connect("/v1/stream"), \
            pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/v1/stream"):
        pass
    assert refused.value.status_code == 503 and refused.value.headers["retry-after"] == "1"
    error = refused.value.json()["error"]
    assert error["code"] == "overloaded" and "STREAM_MAX_CONCURRENT" in error["message"]
    assert client.app.state.service.open_streams == 0
    assert stream(client, [pcm16(noise(SAMPLE_RATE))])[-1]["type"] == "end"  # the slots came back


def test_a_server_without_handshake_responses_closes_a_stream_over_the_limit_with_4503(make_client):
    started = make_client(stream_max_concurrent=1, **STREAM)
    started.app.state.service.open_streams = 1  # as if one stream were open

    async def without_denial_responses(scope, receive, send):
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "websocket.http.response"}
        await started.app({**scope, "extensions": extensions}, receive, send)

    with TestClient(without_denial_responses).websocket_connect("/v1/stream") as ws:
        ws.send_text("end")  # a stream let in would answer {"type": "end"} and close 1000
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["type"] == "error" and error["code"] == "overloaded"
    assert (closed.value.code, closed.value.reason) == (4503, "overloaded")
