"""A client that goes away while its clip waits for the model has its work dropped before compute."""

import threading
import time

import pytest

from ..samples import noise, wav_bytes
from .test_middleware import metric

BOUNDARY = "testboundary"


def multipart_body(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def post_then_hang_up(app, body: bytes) -> list[dict]:
    """Send the whole request, then report a disconnect as soon as the app listens for one."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/analyze", "raw_path": b"/v1/analyze", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    sent_body = False
    messages: list[dict] = []

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    await app(scope, receive, send)
    return messages


@pytest.fixture
def hold_model(tiny_model, monkeypatch):
    """`hold_model()` (after warm-up) makes `predict` block until `release` is set; `busy` is set once a batch
    is in it."""
    release, busy = threading.Event(), threading.Event()
    real_predict = tiny_model.predict

    def held_predict(waveforms, frames=False):
        busy.set()
        release.wait(30)
        return real_predict(waveforms, frames)

    def hold():
        monkeypatch.setattr(tiny_model, "predict", held_predict)
        return release, busy

    yield hold
    release.set()


def test_a_disconnected_client_does_not_cost_model_time(make_client, hold_model):
    client = make_client()
    engine = client.app.state.service.engine
    release, busy = hold_model()
    computed_before = engine.stats.completed
    blocker = threading.Thread(target=lambda: client.post(
        "/v1/analyze", files={"audio_file": ("b.wav", wav_bytes(noise(16000)))}))
    blocker.start()
    assert busy.wait(10)  # the model is busy with the first request
    messages = client.portal.call(post_then_hang_up, client.app, multipart_body(wav_bytes(noise(16000, seed=2))))
    assert messages[0]["status"] == 499  # answered (to nobody) while the model was still busy
    release.set()
    blocker.join(30)
    deadline = time.monotonic() + 10
    while engine.stats.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats.cancelled == 1
    assert engine.stats.completed == computed_before + 1  # only the first clip reached the model
    scrape = client.get("/metrics").text
    assert metric(scrape, "emoserve_engine_clips_cancelled_total") == 1.0


def test_a_full_queue_is_a_503_overloaded_with_retry_after_before_decoding(make_client, hold_model, monkeypatch):
    client = make_client(max_queue=1, max_batch_size=1)
    engine = client.app.state.service.engine
    release, busy = hold_model()
    decoded = []
    real_decode = engine.decode

    async def counted_decode(*args, **kwargs):
        decoded.append(1)
        return await real_decode(*args, **kwargs)

    monkeypatch.setattr(engine, "decode", counted_decode)
    answers = []

    def post(seed):
        answers.append(client.post("/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000, seed=seed)))}))

    computing = threading.Thread(target=post, args=(1,))
    computing.start()
    assert busy.wait(10)
    waiting = threading.Thread(target=post, args=(2,))
    waiting.start()
    deadline = time.monotonic() + 10
    while engine.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = client.post("/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000, seed=3)))})
    release.set()
    computing.join(30)
    waiting.join(30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert [a.status_code for a in answers] == [200, 200]
    assert engine.stats.rejected == 1 and len(decoded) == 2  # refused before its audio was decoded
    assert metric(client.get("/metrics").text, "emoserve_engine_clips_rejected_total") == 1
