"""The Python client against live servers: the real API on random:tiny, and tiny scripted servers for retries."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import soundfile as sf

from emoserve import LABELS, AudioError, EmotionResult, InvalidParameterError
from emoserve.api.app import create_app
from emoserve.client import (
    AsyncEmoClient,
    AuthenticationError,
    ClientResult,
    EmoClient,
    ServiceUnavailableError,
)
from emoserve.client.parse import parse_multipart, retry_after_seconds
from emoserve.config import Settings
from emoserve.errors import NotFoundError
from emoserve.inference.results import LongformResult

from .integrations.live import serve_in_thread
from .samples import encode, noise, sweep, wav_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model) -> str:
    root = tmp_path_factory.mktemp("client-server")
    settings = Settings.from_flat(model="random:tiny", log_dir=root / "logs", data_dir=root / "data")
    with serve_in_thread(create_app(settings, model=tiny_model)) as base:
        yield base


@pytest.fixture
def client(server, tmp_path) -> EmoClient:
    with EmoClient(server, resume_dir=tmp_path / "resume") as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    path.write_bytes(wav_bytes(sweep(1.2) + noise(int(1.2 * 16000), seed=3)))
    return path


def assert_same_result(got: EmotionResult, want: EmotionResult, atol: float = 1e-5) -> None:
    assert isinstance(got, EmotionResult)
    assert (got.emotion, got.granularity, got.model, got.labels) == (want.emotion, want.granularity, want.model,
                                                                     want.labels)
    assert got.duration_s == pytest.approx(want.duration_s)
    assert got.utterance_scores.keys() == want.utterance_scores.keys()
    np.testing.assert_allclose(list(got.utterance_scores.values()), list(want.utterance_scores.values()), atol=atol)
    if want.granularity == "frame":
        assert isinstance(got.scores, np.ndarray) and got.scores.shape == want.scores.shape
        np.testing.assert_allclose(got.scores, want.scores, atol=atol)
        np.testing.assert_allclose(got.timestamps, want.timestamps)
    if want.embedding is not None:
        assert got.embedding.dtype == np.float32 and got.embedding.shape == want.embedding.shape
        np.testing.assert_allclose(got.embedding, want.embedding, atol=atol)


# ---- the real API ----


def test_health_and_models(client):
    health = client.health()
    assert health["status"] == "healthy" and health["model"] == "random:tiny"
    (info,) = client.models()
    assert info.name == "random:tiny" and info.labels == LABELS and info.embedding_dim > 0 and info.weights == "random"


def test_the_clients_model_info_is_the_servers_whole(client, tiny_model, monkeypatch):
    # a field the server once left out (a property of the execution plan: patched on the class for this test)
    monkeypatch.setattr(type(tiny_model), "quantization", property(lambda model: "int8-dynamic"))
    assert client.models() == [tiny_model.info]


def test_analyze_a_path_gives_the_library_result(client, clip, tiny_model):
    result = client.analyze(clip)
    assert isinstance(result, ClientResult) and result.request_id
    assert result.embedding is None and result.processed_audio is None
    assert_same_result(result, tiny_model.analyze(clip))


def test_frame_result_with_embedding_and_processed_audio_comes_from_multipart(client, clip, tiny_model):
    result = client.analyze(clip, granularity="frame", return_embedding=True, return_processed_audio=True)
    assert_same_result(result, tiny_model.analyze(clip, granularity="frame", return_embedding=True))
    heard, rate = sf.read(io.BytesIO(result.processed_audio), dtype="float32")
    assert rate == 16000 and len(heard) == round(result.duration_s * 16000)


def test_utterance_embedding_bytes_array_and_file_object(client, clip, tiny_model):
    want = tiny_model.analyze(clip, return_embedding=True)
    assert_same_result(client.analyze(clip.read_bytes(), return_embedding=True), want)
    with open(clip, "rb") as f:
        assert_same_result(client.analyze(f, return_embedding=True), want)
    samples = sweep(1.0, rate=8000)
    assert_same_result(client.analyze(samples, sample_rate=8000), tiny_model.analyze(samples, sample_rate=8000))


def test_parse_multipart_keeps_binary_parts_exact():
    payload = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n"
    body = (b"--b0undary\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}\r\n"
            b"--b0undary\r\nContent-Type: application/x-npy\r\nContent-Length: %d\r\n\r\n" % len(payload)
            + payload + b"\r\n--b0undary--\r\n")
    (h1, p1), (h2, p2) = parse_multipart("multipart/mixed; boundary=b0undary", body)
    assert h1["content-type"] == "application/json" and p1 == b"{}"
    assert h2["content-type"] == "application/x-npy" and p2 == payload


def test_bad_input_raises_typed_errors_at_once(server):
    requests = []
    with EmoClient(server, transport=counting_transport(requests)) as client:
        with pytest.raises(AudioError) as empty:
            client.analyze(b"")
        assert empty.value.code == "empty_audio" and empty.value.status_code == 400
        with pytest.raises(AudioError) as garbage:
            client.analyze(b"this is not audio at all" * 20)
        assert garbage.value.code in ("unsupported_format", "corrupt_audio") and garbage.value.message
        with pytest.raises(AudioError) as short:
            client.analyze(np.zeros(100, np.float32))
        assert short.value.code == "too_short"
    assert len(requests) == 3  # 4xx: no retries
    with pytest.raises(InvalidParameterError):
        EmoClient(server).analyze(b"x", granularity="word")


def test_api_keys(tmp_path, tiny_model, clip):
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", api_keys="sesame")
    with serve_in_thread(create_app(settings, model=tiny_model)) as base:
        with pytest.raises(AuthenticationError) as refused:
            EmoClient(base).models()
        assert refused.value.code == "unauthorized" and refused.value.status_code == 401
        assert EmoClient(base, api_key="sesame").analyze(clip).model == "random:tiny"


def test_preconvert_sends_16k_mono_flac_and_gives_the_same_emotion(client, server, tmp_path, tiny_model):
    stereo = np.stack([sweep(1.5, rate=44100), noise(int(1.5 * 44100), seed=5)], axis=1)
    mp3 = tmp_path / "clip.mp3"
    mp3.write_bytes(encode(stereo, 44100, "mp3"))
    sent = []
    with EmoClient(server, preconvert=True, transport=counting_transport(sent)) as converting:
        result = converting.analyze(mp3, granularity="frame")
    body = sent[0].content
    assert b'filename="clip.flac"' in body and b"fLaC" in body
    assert len(body) < mp3.stat().st_size * 3
    want = tiny_model.analyze(mp3, granularity="frame")
    assert result.scores.shape == want.scores.shape
    np.testing.assert_allclose(result.scores, want.scores, atol=2e-3)  # 16-bit rounding of the same samples


def test_async_client(server, clip, tiny_model):
    async def main():
        async with AsyncEmoClient(server) as client:
            health = await client.health()
            results = await asyncio.gather(*(client.analyze(clip, granularity="frame") for _ in range(3)))
            return health, results

    health, results = asyncio.run(main())
    assert health["status"] == "healthy"
    want = tiny_model.analyze(clip, granularity="frame")
    for result in results:
        assert_same_result(result, want)


def test_local_client_has_the_same_methods_and_results(client, clip, tiny_model):
    with EmoClient.local(tiny_model) as local:
        assert local.health()["status"] == "healthy"
        assert local.models()[0].name == client.models()[0].name
        for kwargs in ({}, {"granularity": "frame", "return_embedding": True}):
            got, want = local.analyze(clip, **kwargs), client.analyze(clip, **kwargs)
            assert isinstance(got, ClientResult)
            assert_same_result(got, want)
        heard = local.analyze(clip, return_processed_audio=True).processed_audio
        assert heard == client.analyze(clip, return_processed_audio=True).processed_audio
        timeline = local.analyze_long(clip)
        assert isinstance(timeline, LongformResult) and timeline.duration_s == pytest.approx(1.2)


# ---- retries, against scripted servers ----


class Script:
    """A tiny HTTP server answering POSTs from a list of (status, headers, body), then the last one forever."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                script.seen.append(time.monotonic())
                status, headers, body = script.answers[min(len(script.seen), len(script.answers)) - 1]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json",
                                    "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


OK = (200, {}, {"emotion": "happy", "confidence": 0.9, "scores": dict.fromkeys(LABELS, 0.0) | {"happy": 0.9},
                "duration_s": 1.0, "model": "scripted", "granularity": "utterance"})
BUSY = (503, {"Retry-After": "1"}, {"error": {"code": "overloaded", "message": "the queue is full"}})


def test_503_twice_then_200_is_retried_honouring_retry_after():
    script = Script([BUSY, BUSY, OK])
    try:
        started = time.monotonic()
        result = EmoClient(script.url).analyze(b"RIFF....")
        assert result.emotion == "happy" and result.model == "scripted"
        assert len(script.seen) == 3
        assert script.seen[1] - script.seen[0] >= 0.95 and script.seen[2] - script.seen[1] >= 0.95
        assert time.monotonic() - started < 10
    finally:
        script.close()


def test_retries_run_out_then_the_503_is_raised():
    script = Script([BUSY, BUSY, OK])
    try:
        with pytest.raises(ServiceUnavailableError) as busy:
            EmoClient(script.url, retries=1).analyze(b"RIFF....")
        assert busy.value.code == "overloaded" and busy.value.retry_after == 1.0 and len(script.seen) == 2
    finally:
        script.close()


def test_4xx_and_model_unavailable_are_not_retried():
    bad = (400, {}, {"error": {"code": "corrupt_audio", "message": "broken"}})
    broken = (503, {}, {"error": {"code": "model_unavailable", "message": "the model failed to load"}})
    for answer, error in ((bad, AudioError), (broken, ServiceUnavailableError)):
        script = Script([answer, OK])
        try:
            with pytest.raises(error):
                EmoClient(script.url).analyze(b"RIFF....")
            assert len(script.seen) == 1
        finally:
            script.close()


def test_connection_errors_are_retried_with_backoff(server, clip):
    attempts = []

    class Flaky(httpx.HTTPTransport):
        def handle_request(self, request):
            attempts.append(time.monotonic())
            if len(attempts) <= 2:
                raise httpx.ConnectError("connection refused", request=request)
            return super().handle_request(request)

    with EmoClient(server, transport=Flaky()) as client:
        assert client.analyze(clip).model == "random:tiny"
    gaps = np.diff(attempts)
    assert len(attempts) == 3 and gaps[0] >= 0.24 and gaps[1] >= 0.49  # backoff 0.5 s × 2^attempt, ±50% jitter
    with EmoClient("http://127.0.0.1:9", retries=1) as nowhere, pytest.raises(httpx.ConnectError):
        nowhere.health()


def counting_transport(requests: list) -> httpx.HTTPTransport:
    """A real transport that also keeps every request it sends (bodies read)."""

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request):
            request.read()
            requests.append(request)
            return super().handle_request(request)

    return Counting()


# ---- long audio: chunked parallel upload, jobs, resume ----


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    from .samples import long_recording

    path = tmp_path_factory.mktemp("long") / "call.wav"
    path.write_bytes(wav_bytes(long_recording(12.0, seed=4)))
    return path


CHUNK = 64 * 1024


def test_analyze_long_uploads_chunks_in_parallel_and_matches_the_library(client, long_file, tiny_model):
    sent = []
    with EmoClient(client.base_url, resume_dir=client.resume_dir, transport=counting_transport(sent)) as counted:
        timeline = counted.analyze_long(long_file, granularity="frame", return_embedding=True, chunk_size=CHUNK,
                                        parallel=3)
    puts = [r for r in sent if r.method == "PUT"]
    assert len(puts) == -(-long_file.stat().st_size // CHUNK) > 3
    assert all(len(r.content) <= CHUNK for r in puts)
    want = tiny_model.analyze_long(long_file, granularity="frame", return_embedding=True)
    assert isinstance(timeline, LongformResult)
    assert [(s.start, s.end, s.emotion) for s in timeline.segments] == \
        [(s.start, s.end, s.emotion) for s in want.segments]
    assert timeline.overall.emotion == want.overall.emotion
    assert timeline.frame_scores.shape == want.frame_scores.shape
    np.testing.assert_allclose(timeline.frame_scores, want.frame_scores, atol=1e-4)
    np.testing.assert_allclose(timeline.timestamps, want.timestamps)
    assert timeline.embedding.shape == want.embedding.shape
    assert not list(client.resume_dir.glob("*.json"))  # nothing left to resume


def test_submit_job_wait_and_delete(client, long_file):
    job = client.submit_long(long_file.read_bytes(), chunk_size=CHUNK)
    assert job.status in ("queued", "running", "succeeded") and not job.error
    done = client.wait(job, timeout=60)
    assert done.status == "succeeded" and done.progress == 1.0 and done.result.segments
    again = client.job(job.job_id)
    assert again.result.overall == done.result.overall
    client.delete_job(job.job_id)
    with pytest.raises(NotFoundError):
        client.job(job.job_id)


def test_an_interrupted_upload_resumes_with_the_missing_chunks_only(server, tmp_path, long_file):
    class DropsChunk2(httpx.HTTPTransport):
        def handle_request(self, request):
            if request.method == "PUT" and request.url.path.endswith("/chunk/2"):
                raise httpx.ConnectError("the network went away", request=request)
            return super().handle_request(request)

    resume_dir = tmp_path / "resume"
    with EmoClient(server, retries=0, resume_dir=resume_dir, transport=DropsChunk2()) as broken, \
            pytest.raises(httpx.ConnectError):
        broken.analyze_long(long_file, chunk_size=CHUNK, parallel=2)
    (state_file,) = resume_dir.glob("*.json")
    upload_id = json.loads(state_file.read_text())["upload_id"]
    missing = httpx.get(f"{server}/v1/upload/{upload_id}").json()["missing"]
    assert 2 in missing and len(missing) < -(-long_file.stat().st_size // CHUNK)  # chunks after 2 may be cancelled

    sent = []
    with EmoClient(server, resume_dir=resume_dir, transport=counting_transport(sent)) as again:
        timeline = again.analyze_long(long_file, chunk_size=CHUNK)
    assert sorted(r.url.path for r in sent if r.method == "PUT") == \
        sorted(f"/v1/upload/{upload_id}/chunk/{i}" for i in missing)
    assert [r.method for r in sent if r.method != "PUT"][0] == "GET" and not sent[0].url.path.endswith("init")
    assert timeline.segments and not state_file.exists()


def test_a_forgotten_upload_starts_over(client, long_file):
    from emoserve.client.flows import ResumeFile
    from emoserve.files import file_sha256

    ResumeFile(client.resume_dir, client.base_url, file_sha256(long_file)).save(
        {"upload_id": "0" * 32, "chunk_size": CHUNK})
    assert client.analyze_long(long_file, chunk_size=CHUNK).segments


def test_async_analyze_long_and_preconverted_long_file(server, tmp_path, long_file, tiny_model):
    mp3 = tmp_path / "call.mp3"
    samples, rate = sf.read(long_file, dtype="float32")
    mp3.write_bytes(encode(samples, rate, "mp3"))

    async def main():
        async with AsyncEmoClient(server, resume_dir=tmp_path / "resume") as client:
            return await asyncio.gather(client.analyze_long(long_file, chunk_size=CHUNK, parallel=4),
                                        client.analyze_long(mp3, chunk_size=CHUNK, preconvert=True))

    plain, converted = asyncio.run(main())
    assert [s.emotion for s in plain.segments] == [s.emotion for s in tiny_model.analyze_long(long_file).segments]
    assert converted.duration_s == pytest.approx(plain.duration_s, abs=0.1) and converted.segments


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_split_analysis_gives_the_library_split_result_with_parts_per_channel(client, tiny_model, granularity):
    stereo = wav_bytes(np.stack([sweep(1.0, rate=44100), noise(44100, seed=5, amplitude=0.3)], axis=1), rate=44100)
    got = client.analyze(stereo, granularity=granularity, return_embedding=True, return_processed_audio=True,
                         channels="split", channel_names=["agent", "customer"])
    want = tiny_model.analyze(stereo, granularity=granularity, return_embedding=True, channels="split",
                              channel_names="agent,customer")
    assert [(c.channel, c.name) for c in got.channels] == [(0, "agent"), (1, "customer")]
    assert got.duration_s == want.duration_s and got.model == want.model
    for mine, theirs in zip(got.channels, want.channels, strict=True):
        assert isinstance(mine.result, ClientResult)
        assert_same_result(mine.result, theirs.result)
        heard, rate = sf.read(io.BytesIO(mine.result.processed_audio), dtype="float32")
        assert rate == 16000 and len(heard) == 16000


@pytest.mark.parametrize("local", [False, True])
def test_long_split_embeddings_come_per_channel_as_each_channel_alone(client, tiny_model, local):
    from .samples import long_recording

    samples = np.stack([long_recording(6.0, seed=s) for s in (1, 2)], axis=1)
    with EmoClient.local(tiny_model) if local else client as runner:
        got = runner.analyze_long(wav_bytes(samples), granularity="frame", return_embedding=True, channels="split",
                                  chunk_size=CHUNK)
    for entry in got.channels:
        alone = tiny_model.analyze_long(wav_bytes(samples[:, entry.channel]), granularity="frame",
                                        return_embedding=True)
        assert entry.result.embedding.shape == alone.embedding.shape
        np.testing.assert_allclose(entry.result.embedding, alone.embedding, rtol=0, atol=1e-5)


def test_the_async_client_takes_every_option_the_client_takes():
    import inspect

    for name in ("analyze", "analyze_long", "submit_long", "job", "wait", "delete_job"):
        sync, sent = (inspect.signature(getattr(cls, name)) for cls in (EmoClient, AsyncEmoClient))
        assert list(sent.parameters) == list(sync.parameters), name


def test_the_async_client_splits_channels(server, tiny_model):
    stereo = wav_bytes(np.stack([sweep(1.0, rate=16000), noise(16000, seed=5, amplitude=0.3)], axis=1))

    async def main():
        async with AsyncEmoClient(server) as client:
            return await client.analyze(stereo, granularity="frame", channels="split", channel_names="agent,customer")

    got = asyncio.run(main())
    want = tiny_model.analyze(stereo, granularity="frame", channels="split", channel_names="agent,customer")
    assert [(c.channel, c.name) for c in got.channels] == [(0, "agent"), (1, "customer")]
    for mine, theirs in zip(got.channels, want.channels, strict=True):
        assert_same_result(mine.result, theirs.result)


# ---- retries: 429, Retry-After dates, calls that must not run twice ----


def test_429_is_retried_after_retry_after_like_503():
    limited = (429, {"Retry-After": "1"}, {"error": {"code": "rate_limited", "message": "60 requests a minute"}})
    script = Script([limited, limited, OK])
    try:
        result = EmoClient(script.url).analyze(b"RIFF....")
        assert result.emotion == "happy" and len(script.seen) == 3
        assert script.seen[1] - script.seen[0] >= 0.95 and script.seen[2] - script.seen[1] >= 0.95
    finally:
        script.close()


def test_retry_after_may_be_an_http_date():
    now = time.time()
    assert retry_after_seconds(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90, abs=1)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: no wait
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_429_with_an_http_date_waits_until_that_date():
    script = Script([])
    later = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    script.answers = [(429, {"Retry-After": later}, {"error": {"code": "quota_exceeded", "message": "full"}}), OK]
    try:
        assert EmoClient(script.url).analyze(b"RIFF....").emotion == "happy"
        assert len(script.seen) == 2 and script.seen[1] - script.seen[0] >= 0.9
    finally:
        script.close()


def failing_once(path: str, error: type[httpx.TransportError], attempts: list) -> httpx.HTTPTransport:
    """A real transport whose first request to `path` fails with `error` after reaching the server (or, for
    a connect error, before)."""

    class FailingOnce(httpx.HTTPTransport):
        def handle_request(self, request):
            if request.url.path != path:
                return super().handle_request(request)
            attempts.append(request.url.path)
            if len(attempts) > 1:
                return super().handle_request(request)
            if error is httpx.ConnectError:
                raise error("connection refused", request=request)
            super().handle_request(request).close()  # the server acted on it; its answer is lost
            raise error("timed out reading the answer", request=request)

    return FailingOnce()


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_upload_init_is_not_sent_again_after_the_server_may_have_acted_on_it(server, tmp_path, long_file, error):
    attempts = []
    with EmoClient(server, resume_dir=tmp_path, transport=failing_once("/v1/upload/init", error, attempts)) as c, \
            pytest.raises(error):
        c.submit_long(long_file, chunk_size=CHUNK)
    assert attempts == ["/v1/upload/init"]


def test_upload_init_is_retried_when_it_never_reached_the_server(server, tmp_path, long_file):
    attempts = []
    with EmoClient(server, resume_dir=tmp_path, transport=failing_once("/v1/upload/init", httpx.ConnectError,
                                                                       attempts)) as c:
        assert c.submit_long(long_file, chunk_size=CHUNK).job_id
    assert attempts == ["/v1/upload/init"] * 2


@pytest.mark.parametrize("path", ["/v1/analyze", "/v1/upload/complete"])
def test_idempotent_calls_are_retried_after_a_read_timeout(server, tmp_path, clip, long_file, path):
    attempts = []
    with EmoClient(server, resume_dir=tmp_path, transport=failing_once(path, httpx.ReadTimeout, attempts)) as c:
        if path == "/v1/analyze":
            assert c.analyze(clip).model == "random:tiny"
        else:
            job = c.submit_long(long_file, chunk_size=CHUNK)
            assert c.wait(job, timeout=60).status == "succeeded"
    assert attempts == [path, path]


@pytest.mark.parametrize("batching", [True, False])
def test_local_client_splits_channels_like_the_library(tiny_model, batching):
    stereo = wav_bytes(np.stack([sweep(1.0, rate=44100), noise(44100, seed=5, amplitude=0.3)], axis=1), rate=44100)
    with EmoClient.local(tiny_model, batching=batching) as local:
        got = local.analyze(stereo, granularity="frame", return_embedding=True, return_processed_audio=True,
                            channels="split", channel_names="agent,customer")
        with pytest.raises(InvalidParameterError, match="one channel"):
            local.analyze(wav_bytes(noise(16000)), channels="split")
    want = tiny_model.analyze(stereo, granularity="frame", return_embedding=True, channels="split",
                              channel_names="agent,customer")
    assert [(c.channel, c.name) for c in got.channels] == [(0, "agent"), (1, "customer")]
    assert got.duration_s == want.duration_s
    for mine, theirs in zip(got.channels, want.channels, strict=True):
        assert_same_result(mine.result, theirs.result)
        assert sf.read(io.BytesIO(mine.result.processed_audio))[1] == 16000
