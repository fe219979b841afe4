"""The Python client: the HTTP API (sync or async, on httpx) or a local model, with the library's result types.

    with EmoClient("http://127.0.0.1:8000") as client:
        r = client.analyze("clip.wav", granularity="frame", return_embedding=True)
        r.emotion, r.scores, r.embedding                      # as from EmotionModel.analyze
        timeline = client.analyze_long("meeting.mp3")         # chunked, parallel, resumable upload + job

    client = EmoClient.local(EmotionModel.from_pretrained("random:tiny"))   # same methods, no server

Every call is written once, as a *flow*: a generator that yields the HTTP requests (`Call`), pauses
(`Sleep`) and parallel sub-flows (`Together`) it needs and gets their answers back. `EmoClient` runs
flows with blocking httpx and threads, `AsyncEmoClient` with asyncio, so both behave the same and
the retry policy, the error mapping and the upload protocol exist in one place.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import numpy as np

from ..errors import (
    AudioError,
    ChecksumMismatchError,
    ConflictError,
    EmoserveError,
    InvalidParameterError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UploadExpiredError,
    UploadIncompleteError,
)
from ..labels import LABELS
from ..results import EmotionResult, LongformResult, Overall, Segment, check_granularity

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
PRECONVERT_FORMATS = {"flac": ("FLAC", "PCM_16", "audio/flac", ".flac"), "wav": ("WAV", "PCM_16", "audio/wav", ".wav")}
HASH_BLOCK = 1 << 20
JOB_POLL_S = 30.0  # the longest single `?wait=` long-poll; the server answers earlier when the job ends


# ---- errors: the server's code → the library's typed error ----


class AuthenticationError(EmoserveError):
    """No API key, or a wrong one (401): pass `api_key=` or set EMOSERVE_API_KEY."""

    code = "unauthorized"


class RateLimitedError(EmoserveError):
    """The per-key rate limit was hit (429): wait `retry_after` seconds."""

    code = "rate_limited"


class ServiceUnavailableError(EmoserveError):
    """The model is loading, the queue is full, or the model failed to load (503)."""

    code = "overloaded"


ERRORS_BY_CODE: dict[str, type[EmoserveError]] = {
    "empty_audio": AudioError, "unsupported_format": AudioError, "corrupt_audio": AudioError,
    "too_short": AudioError, "audio_too_long": AudioError, "invalid_parameter": InvalidParameterError,
    "not_found": NotFoundError, "conflict": ConflictError, "upload_incomplete": UploadIncompleteError,
    "upload_expired": UploadExpiredError, "checksum_mismatch": ChecksumMismatchError,
    "payload_too_large": PayloadTooLargeError, "quota_exceeded": QuotaExceededError,
    "unauthorized": AuthenticationError, "rate_limited": RateLimitedError,
    "model_loading": ServiceUnavailableError, "overloaded": ServiceUnavailableError,
    "model_unavailable": ServiceUnavailableError,
}
RETRYABLE_CODES = {"model_loading", "overloaded"}  # model_unavailable is a broken deployment: retrying won't help


def error_from_response(response: httpx.Response) -> EmoserveError:
    """The typed error for a non-2xx answer, carrying the server's code, message, status and Retry-After."""
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
    except (ValueError, KeyError, TypeError):
        code = {401: "unauthorized", 404: "not_found", 413: "payload_too_large", 429: "rate_limited",
                503: "overloaded"}.get(response.status_code, "internal_error")
        message, details = f"HTTP {response.status_code}: {response.text[:200]}", {}
    error = ERRORS_BY_CODE.get(code, EmoserveError)(message, code=code, details=details)
    error.status_code = response.status_code
    error.request_id = response.headers.get("x-request-id")
    error.retry_after = retry_after_seconds(response.headers.get("retry-after"))
    return error


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare from proxies; fall back to our backoff
        return None


def is_retryable(error: Exception) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, EmoserveError) and error.code in RETRYABLE_CODES


# ---- results ----


@dataclass(frozen=True)
class ClientResult(EmotionResult):
    """An `EmotionResult` as the clients return it: plus the audio the model heard and the request id."""

    processed_audio: bytes | None = None  # 16 kHz mono PCM16 WAV, with return_processed_audio
    request_id: str | None = None


def result_from_body(body: dict, embedding: bytes | None = None, processed_audio: bytes | None = None,
                     request_id: str | None = None) -> ClientResult:
    """The API's JSON (docs/API.md) → the library's result, numpy arrays where the library has them."""
    if embedding is None and body.get("embedding_npy_b64"):
        embedding = base64.b64decode(body["embedding_npy_b64"])
    if processed_audio is None and body.get("processed_audio_wav_b64"):
        processed_audio = base64.b64decode(body["processed_audio_wav_b64"])
    granularity = body.get("granularity") or ("frame" if "timestamps" in body else "utterance")
    if granularity == "frame":
        labels = tuple(body["labels"])
        scores: dict | np.ndarray = np.asarray(body["scores"], dtype=np.float32).reshape(-1, len(labels))
        utterance_scores = dict(body.get("utterance_scores") or {})
        timestamps = np.asarray(body["timestamps"], dtype=np.float64)
    else:
        utterance_scores = dict(body.get("scores") or {})
        labels, scores, timestamps = tuple(utterance_scores) or LABELS, utterance_scores, None
    return ClientResult(body.get("emotion"), body.get("confidence"), scores, labels, float(body["duration_s"]),
                        body["model"], granularity, utterance_scores, timestamps,
                        load_npy(embedding) if embedding is not None else None, processed_audio, request_id)


def longform_from_body(body: dict, embedding: bytes | None = None) -> LongformResult:
    """A finished job's `result` JSON → `LongformResult`."""
    segments = [Segment(s["start"], s["end"], s.get("emotion"), s.get("confidence"), dict(s.get("scores") or {}))
                for s in body["segments"]]
    o = body["overall"]
    overall = Overall(o.get("emotion"), o.get("confidence"), dict(o.get("scores") or {}), o.get("speech_s", 0.0))
    labels = tuple(body.get("labels") or LABELS)
    frames = body.get("scores")
    return LongformResult(segments, overall, labels, float(body["duration_s"]), body["model"], body["granularity"],
                          np.asarray(frames, dtype=np.float32).reshape(-1, len(labels)) if frames is not None else None,
                          np.asarray(body["timestamps"], dtype=np.float64) if frames is not None else None,
                          load_npy(embedding) if embedding is not None else None)


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def parse_multipart(content_type: str, payload: bytes) -> list[tuple[dict[str, str], bytes]]:
    """A multipart/mixed body → [(headers, bytes)] per part, with python-multipart's streaming parser."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise EmoserveError("the server sent multipart/mixed without a boundary", code="internal_error")
    parts: list[tuple[dict[str, str], bytes]] = []
    header: dict[str, bytes] = {}

    def on_part_begin() -> None:
        parts.append(({}, b""))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1][0][header.pop("field", b"").decode().lower()] = header.pop("value", b"").decode()

    chunks: list[bytes] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        parts[-1] = (parts[-1][0], b"".join(chunks))
        chunks.clear()

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(payload)
    parser.finalize()
    return parts


def result_from_response(response: httpx.Response) -> ClientResult:
    """JSON, or multipart/mixed: the JSON result first, then embedding.npy and/or processed.wav."""
    request_id = response.headers.get("x-request-id")
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("multipart/"):
        return result_from_body(response.json(), request_id=request_id)
    parts = parse_multipart(content_type, response.content)
    body = json.loads(parts[0][1])
    binary = {headers.get("content-type", "").split(";")[0].strip(): data for headers, data in parts[1:]}
    return result_from_body(body, binary.get("application/x-npy"), binary.get("audio/wav"), request_id)


@dataclass(frozen=True)
class Job:
    """A long-audio job (`GET /v1/jobs/{id}`); `result` is set once it succeeded, `error` once it failed."""

    job_id: str
    status: str  # queued | running | succeeded | failed
    progress: float
    result: LongformResult | None = None
    error: EmoserveError | None = None
    options: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


def job_from_body(body: dict, embedding: bytes | None = None) -> Job:
    error = None
    if body.get("error"):
        e = body["error"]
        code = e.get("code", "internal_error")
        error = ERRORS_BY_CODE.get(code, EmoserveError)(e.get("message", "the job failed"), code=code,
                                                         details=e.get("details") or {})
    result = longform_from_body(body["result"], embedding) if body.get("result") else None
    return Job(body["job_id"], body["status"], float(body.get("progress") or 0.0), result, error,
               dict(body.get("options") or {}))


# ---- audio to send ----


def preconvert(source: Any, target: BinaryIO, fmt: str = "flac", sample_rate: int | None = None) -> None:
    """Decode, mix to mono and resample to 16 kHz (`emoserve.audio`, streamed) into 16-bit FLAC or WAV.

    The server then skips decoding (a 16 kHz mono PCM WAV or FLAC is its fast path), and compressed
    sources shrink less than they would as WAV: FLAC keeps uploads small.
    """
    import soundfile as sf

    from ..audio import SAMPLE_RATE, stream_audio

    if fmt not in PRECONVERT_FORMATS:
        raise InvalidParameterError(f"preconvert format must be {' or '.join(PRECONVERT_FORMATS)}, got {fmt!r}")
    container, subtype, _, _ = PRECONVERT_FORMATS[fmt]
    with sf.SoundFile(target, "w", SAMPLE_RATE, 1, subtype, format=container) as out:
        # float sources may go past full scale: clip rather than let the 16-bit conversion wrap around
        stream_audio(source, lambda block, expected: out.write(np.clip(block, -1.0, 1.0)), sample_rate=sample_rate)


def encode_upload(audio: Any, sample_rate: int | None, convert: str | None,
                  filename: str | None) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) of what `analyze` sends."""
    if convert:
        buffer = io.BytesIO()
        preconvert(audio, buffer, convert, sample_rate)
        stem = Path(filename or (str(audio) if isinstance(audio, str | Path) else "audio")).stem
        _, _, mime, suffix = PRECONVERT_FORMATS[convert]
        return stem + suffix, buffer.getvalue(), mime
    if isinstance(audio, np.ndarray):  # float WAV: exactly the samples given, at their rate
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate or 16_000, format="WAV", subtype="FLOAT")
        return filename or "audio.wav", buffer.getvalue(), "audio/wav"
    if isinstance(audio, str | Path):
        return filename or Path(audio).name, Path(audio).read_bytes(), "application/octet-stream"
    if isinstance(audio, bytes | bytearray | memoryview):
        return filename or "audio", bytes(audio), "application/octet-stream"
    if hasattr(audio, "read"):
        return filename or Path(getattr(audio, "name", "audio")).name, audio.read(), "application/octet-stream"
    raise InvalidParameterError(f"audio must be a path, bytes, a file object or a numpy array, not {type(audio)}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_chunk(path: Path, index: int, chunk_size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(index * chunk_size)
        return f.read(chunk_size)


class ResumeFile:
    """Where an upload in progress is remembered: one small JSON per (server, file content).

    A re-run of `analyze_long` on the same file finds it, asks the server which chunks arrived
    (`GET /v1/upload/{id}`) and sends only the others.
    """

    def __init__(self, directory: Path, base_url: str, sha256: str):
        key = hashlib.sha256(f"{base_url}|{sha256}".encode()).hexdigest()[:32]
        self.path = directory / f"{key}.json"

    def load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(state))
        os.replace(temp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# ---- flows: the calls, written once for both clients ----


@dataclass
class Call:
    """One HTTP request, sent once (`retrying` adds the retry policy); `ok` lists non-2xx statuses to accept."""

    method: str
    url: str
    params: dict | None = None
    json: Any = None
    data: dict | None = None
    files: dict | None = None
    content: bytes | None = None
    headers: dict | None = None
    timeout: float | None = None
    ok: tuple[int, ...] = ()


@dataclass
class Sleep:
    seconds: float


@dataclass
class Together:
    """Sub-flows run at the same time, at most `limit` at once; the answer is their results in order."""

    flows: list[Generator]
    limit: int


Flow = Generator[Call | Sleep | Together, Any, T]


@dataclass(frozen=True)
class RetryPolicy:
    """503 `model_loading`/`overloaded` and connection errors are retried `retries` times, waiting
    Retry-After when the server gives it, else `backoff` × 2^attempt (with jitter), at most `max_delay`."""

    retries: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, error: Exception) -> float:
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return min(self.backoff * 2 ** attempt * (0.5 + random.random()), self.max_delay)


def retrying(call: Call, policy: RetryPolicy) -> Flow[httpx.Response]:
    for attempt in range(policy.retries + 1):
        try:
            return (yield call)
        except Exception as e:
            if attempt == policy.retries or not is_retryable(e):
                raise
            wait = policy.delay(attempt, e)
            log.info("%s %s: %s; retry %d of %d in %.1fs", call.method, call.url, e, attempt + 1, policy.retries,
                     wait)
            yield Sleep(wait)


class Flows:
    """What both clients do, as flows; the subclasses only run them."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, preconvert: bool,
                 preconvert_format: str, resume_dir: str | Path | None):
        from ..settings import get_settings

        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.policy = RetryPolicy(retries=retries)
        self.preconvert = preconvert
        if preconvert_format not in PRECONVERT_FORMATS:
            raise InvalidParameterError(f"preconvert_format must be {' or '.join(PRECONVERT_FORMATS)}")
        self.preconvert_format = preconvert_format
        self.resume_dir = Path(resume_dir) if resume_dir else get_settings().cache / "client-uploads"

    def call(self, method: str, url: str, **kwargs) -> Flow[httpx.Response]:
        return retrying(Call(method, url, **kwargs), self.policy)

    def health_flow(self) -> Flow[dict]:
        response = yield from self.call("GET", "/health", ok=(503,))
        return response.json()

    def models_flow(self) -> Flow[list]:
        from ..emotion_model import ModelInfo

        response = yield from self.call("GET", "/v1/models")
        return [ModelInfo(m["name"], tuple(m["labels"]), m["sample_rate"], m["frame_rate"], m["embedding_dim"],
                          m["device"], m["dtype"], m.get("quantization"), m.get("weights", "pretrained"),
                          m.get("parameters", 0), m.get("min_samples", 0)) for m in response.json()["models"]]

    def analyze_flow(self, audio: Any, granularity: str, return_embedding: bool, return_processed_audio: bool,
                     sample_rate: int | None, preconvert: bool | None, filename: str | None) -> Flow[ClientResult]:
        check_granularity(granularity)
        convert = self.preconvert_format if (self.preconvert if preconvert is None else preconvert) else None
        name, payload, mime = encode_upload(audio, sample_rate, convert, filename)
        data = {"granularity": granularity, "return_embedding": str(return_embedding).lower(),
                "return_processed_audio": str(return_processed_audio).lower()}
        response = yield from self.call("POST", "/v1/analyze", data=data, files={"audio_file": (name, payload, mime)},
                                        headers={"Accept": "multipart/mixed, application/json"})
        return result_from_response(response)

    # ---- long audio: upload (parallel, resumable), job, wait ----

    def submit_long_flow(self, audio: Any, granularity: str, return_embedding: bool, chunk_size: int | None,
                         parallel: int, callback_url: str | None, preconvert: bool | None,
                         resume: bool) -> Flow[Job]:
        job, _ = yield from self.start_job_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                                callback_url, preconvert, resume)
        return job

    def start_job_flow(self, audio: Any, granularity: str, return_embedding: bool, chunk_size: int | None,
                       parallel: int, callback_url: str | None, preconvert: bool | None,
                       resume: bool) -> Flow[tuple[Job, ResumeFile]]:
        check_granularity(granularity)
        if parallel < 1:
            raise InvalidParameterError("parallel must be at least 1")
        convert = self.preconvert_format if (self.preconvert if preconvert is None else preconvert) else None
        with StagedFile(audio, convert) as (path, filename):
            upload_id, resume_file = yield from self.upload_flow(path, filename, chunk_size, parallel, resume)
            body = {"upload_id": upload_id, "granularity": granularity, "return_embedding": return_embedding,
                    "callback_url": callback_url}
            response = yield from self.call("POST", "/v1/upload/complete", json=body)
        return job_from_body(response.json()), resume_file

    def upload_flow(self, path: Path, filename: str, chunk_size: int | None, parallel: int,
                    resume: bool) -> Flow[tuple[str, ResumeFile]]:
        """Send the file in chunks, `parallel` at a time, continuing an earlier upload of the same bytes."""
        sha256 = file_sha256(path)
        total_size = path.stat().st_size
        resume_file = ResumeFile(self.resume_dir, self.base_url, sha256)
        state = resume_file.load() if resume else None
        upload = None
        if state is not None:
            try:
                upload = (yield from self.call("GET", f"/v1/upload/{state['upload_id']}")).json()
            except (NotFoundError, UploadExpiredError):
                upload = None
            if upload is not None and upload.get("state") not in ("uploading", "complete"):
                upload = None
        if upload is None:
            init = {"filename": filename, "total_size": total_size, "sha256": sha256}
            if chunk_size is not None:
                init["chunk_size"] = chunk_size
            upload = (yield from self.call("POST", "/v1/upload/init", json=init)).json()
            upload["missing"] = list(range(upload["chunk_count"]))
            resume_file.save({"upload_id": upload["upload_id"], "chunk_size": upload["chunk_size"],
                              "total_size": total_size, "sha256": sha256, "base_url": self.base_url})
        else:
            log.info("resuming upload %s: %d of %d chunks to send", upload["upload_id"],
                     len(upload.get("missing", [])), upload["chunk_count"])
        upload_id = upload["upload_id"]
        size = upload.get("chunk_size") or state["chunk_size"]
        missing = upload.get("missing", []) if upload.get("state") != "complete" else []
        yield Together([self.chunk_flow(upload_id, path, index, size) for index in missing], parallel)
        return upload_id, resume_file

    def chunk_flow(self, upload_id: str, path: Path, index: int, chunk_size: int) -> Flow[dict]:
        data = read_chunk(path, index, chunk_size)  # read when the flow starts: `parallel` chunks in memory at most
        response = yield from self.call("PUT", f"/v1/upload/{upload_id}/chunk/{index}", content=data,
                                        headers={"Content-Type": "application/octet-stream",
                                                 "X-Chunk-SHA256": hashlib.sha256(data).hexdigest()})
        return response.json()

    def job_flow(self, job_id: str, wait: float | None = None) -> Flow[Job]:
        params = {"wait": f"{wait:g}"} if wait else None
        timeout = self.timeout + (wait or 0.0)
        response = yield from self.call("GET", f"/v1/jobs/{job_id}", params=params, timeout=timeout)
        body = response.json()
        embedding = None
        if body["status"] == "succeeded" and (body.get("options") or {}).get("return_embedding"):
            embedding = (yield from self.call("GET", f"/v1/jobs/{job_id}/embedding.npy")).content
        return job_from_body(body, embedding)

    def wait_flow(self, job: Job | str, timeout: float | None) -> Flow[Job]:
        """Long-poll `?wait=` until the job ends; TimeoutError once `timeout` seconds have passed."""
        job_id = job.job_id if isinstance(job, Job) else job
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = JOB_POLL_S if deadline is None else min(JOB_POLL_S, deadline - time.monotonic())
            asked = time.monotonic()
            current = yield from self.job_flow(job_id, wait=max(remaining, 0.0))
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {current.status} ({current.progress:.0%}) "
                                   f"after {timeout:g} s")
            if time.monotonic() - asked < remaining / 2:  # a server (or proxy) that does not hold the request
                yield Sleep(min(1.0, remaining))

    def analyze_long_flow(self, audio: Any, granularity: str, return_embedding: bool, chunk_size: int | None,
                          parallel: int, callback_url: str | None, preconvert: bool | None, resume: bool,
                          timeout: float | None) -> Flow[LongformResult]:
        job, resume_file = yield from self.start_job_flow(audio, granularity, return_embedding, chunk_size,
                                                          parallel, callback_url, preconvert, resume)
        job = yield from self.wait_flow(job, timeout)
        resume_file.remove()  # kept until now: a re-run after a crash while waiting finds the same job
        if job.error is not None:
            raise job.error
        return job.result

    def delete_job_flow(self, job_id: str) -> Flow[None]:
        yield from self.call("DELETE", f"/v1/jobs/{job_id}")


class StagedFile:
    """The file to upload: the path itself, or a temp file holding bytes or the pre-converted audio."""

    def __init__(self, audio: Any, convert: str | None):
        self.audio, self.convert, self.temp = audio, convert, None

    def __enter__(self) -> tuple[Path, str]:
        import tempfile

        named = isinstance(self.audio, str | Path)
        name = Path(self.audio).name if named else "audio"
        if named and not self.convert:
            return Path(self.audio), name
        handle, temp = tempfile.mkstemp(prefix="emoserve-upload-")
        self.temp = Path(temp)
        with os.fdopen(handle, "wb") as f:
            if self.convert:
                preconvert(self.audio, f, self.convert)
                name = Path(name).stem + PRECONVERT_FORMATS[self.convert][3]
            elif isinstance(self.audio, bytes | bytearray | memoryview):
                f.write(self.audio)
            else:
                raise InvalidParameterError("analyze_long takes a path or bytes (or preconvert=True for arrays)")
        return self.temp, name

    def __exit__(self, *exc_info) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


# ---- the clients ----


class EmoClient(Flows):
    """The HTTP API from blocking code. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, preconvert: bool = False, preconvert_format: str = "flac",
                 resume_dir: str | Path | None = None, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, preconvert, preconvert_format, resume_dir)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport)

    @staticmethod
    def local(model, **kwargs) -> LocalClient:
        """The same methods on a local `EmotionModel` (no server): see `LocalClient`."""
        return LocalClient(model, **kwargs)

    def __enter__(self) -> EmoClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict:
        """`GET /health`: {"status": "healthy" | "loading" | "failed", "model": ...}, never raising for 503."""
        return self.run(self.health_flow())

    def models(self) -> list:
        """The loaded model(s) as `ModelInfo`."""
        return self.run(self.models_flow())

    def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                return_processed_audio: bool = False, *, sample_rate: int | None = None,
                preconvert: bool | None = None, filename: str | None = None) -> ClientResult:
        """One clip (≤ the server's single-request limits): a path, bytes, a file object or a float array
        (at `sample_rate`, default 16 kHz). The result is `EmotionModel.analyze`'s, as `ClientResult`."""
        return self.run(self.analyze_flow(audio, granularity, return_embedding, return_processed_audio,
                                          sample_rate, preconvert, filename))

    def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                     chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                     preconvert: bool | None = None, resume: bool = True,
                     timeout: float | None = None) -> LongformResult:
        """A file of any length: a chunked upload (`parallel` chunks at a time, resumed after a crash),
        a job, and its `LongformResult` once done; `timeout` bounds the wait for the job (None: no bound)."""
        return self.run(self.analyze_long_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                               callback_url, preconvert, resume, timeout))

    def submit_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                    chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                    preconvert: bool | None = None, resume: bool = True) -> Job:
        """Upload and start the job without waiting (poll with `job`/`wait`, or let it call `callback_url`)."""
        return self.run(self.submit_long_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                              callback_url, preconvert, resume))

    def job(self, job_id: str) -> Job:
        return self.run(self.job_flow(job_id))

    def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """The finished job (succeeded or failed); TimeoutError after `timeout` seconds."""
        return self.run(self.wait_flow(job, timeout))

    def delete_job(self, job_id: str) -> None:
        self.run(self.delete_job_flow(job_id))

    # ---- running flows with blocking I/O ----

    def run(self, flow: Flow[T]) -> T:
        value, error = None, None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = self.perform(step)
            except Exception as e:
                error = e

    def perform(self, step: Call | Sleep | Together) -> Any:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Together):
            if not step.flows:
                return []
            with ThreadPoolExecutor(min(step.limit, len(step.flows)), thread_name_prefix="emoserve-upload") as pool:
                return list(pool.map(self.run, step.flows))
        response = self.http.request(step.method, step.url, params=step.params, json=step.json, data=step.data,
                                     files=step.files, content=step.content, headers=step.headers,
                                     timeout=step.timeout or self.timeout)
        if response.is_success or response.status_code in step.ok:
            return response
        raise error_from_response(response)


class AsyncEmoClient(Flows):
    """The HTTP API from asyncio code: `EmoClient`'s methods, awaited."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, preconvert: bool = False, preconvert_format: str = "flac",
                 resume_dir: str | Path | None = None, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, preconvert, preconvert_format, resume_dir)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                      transport=transport)

    async def __aenter__(self) -> AsyncEmoClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def health(self) -> dict:
        return await self.run(self.health_flow())

    async def models(self) -> list:
        return await self.run(self.models_flow())

    async def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                      return_processed_audio: bool = False, *, sample_rate: int | None = None,
                      preconvert: bool | None = None, filename: str | None = None) -> ClientResult:
        # encoding (and pre-conversion) is CPU work: off the event loop
        flow = await asyncio.to_thread(self.started, self.analyze_flow(
            audio, granularity, return_embedding, return_processed_audio, sample_rate, preconvert, filename))
        return await self.run(flow)

    async def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                           chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                           preconvert: bool | None = None, resume: bool = True,
                           timeout: float | None = None) -> LongformResult:
        flow = await asyncio.to_thread(self.started, self.analyze_long_flow(
            audio, granularity, return_embedding, chunk_size, parallel, callback_url, preconvert, resume, timeout))
        return await self.run(flow)

    async def submit_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                          chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                          preconvert: bool | None = None, resume: bool = True) -> Job:
        flow = await asyncio.to_thread(self.started, self.submit_long_flow(
            audio, granularity, return_embedding, chunk_size, parallel, callback_url, preconvert, resume))
        return await self.run(flow)

    async def job(self, job_id: str) -> Job:
        return await self.run(self.job_flow(job_id))

    async def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        return await self.run(self.wait_flow(job, timeout))

    async def delete_job(self, job_id: str) -> None:
        await self.run(self.delete_job_flow(job_id))

    # ---- running flows on the event loop ----

    @staticmethod
    def started(flow: Flow[T]) -> StartedFlow:
        """Run a flow up to its first request (its file reading and encoding), in the calling thread."""
        try:
            return StartedFlow(flow, flow.send(None), None)
        except StopIteration as stop:
            return StartedFlow(flow, None, stop)

    async def run(self, flow: Flow[T] | StartedFlow) -> T:
        started = flow if isinstance(flow, StartedFlow) else self.started(flow)
        if started.done is not None:
            return started.done.value
        flow, step = started.flow, started.step
        while True:
            value, error = None, None
            try:
                value = await self.perform(step)
            except Exception as e:
                error = e
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value

    async def perform(self, step: Call | Sleep | Together) -> Any:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Together):
            gate = asyncio.Semaphore(step.limit)

            async def gated(flow: Flow) -> Any:
                async with gate:  # each chunk is read from disk in a thread
                    return await self.run(await asyncio.to_thread(self.started, flow))

            tasks = [asyncio.ensure_future(gated(flow)) for flow in step.flows]
            try:
                return await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        response = await self.http.request(step.method, step.url, params=step.params, json=step.json,
                                           data=step.data, files=step.files, content=step.content,
                                           headers=step.headers, timeout=step.timeout or self.timeout)
        if response.is_success or response.status_code in step.ok:
            return response
        raise error_from_response(response)


@dataclass
class StartedFlow:
    flow: Generator
    step: Any
    done: StopIteration | None


class LocalClient:
    """`EmoClient`'s methods on a local `EmotionModel`, with the same result types: scripts need not
    care where the model runs. Calls from several threads are batched by an `Engine` (`batching=True`).

    There are no jobs here: `analyze_long` runs the long-audio analysis in the calling thread.
    """

    def __init__(self, model, *, batching: bool = True, max_duration_s: float | None = None):
        self.model = model
        self.max_duration_s = max_duration_s
        self.engine = None
        if batching:
            from ..engine import Engine

            self.engine = Engine(model)

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def health(self) -> dict:
        return {"status": "healthy", "model": self.model.name, "granularity_supported": ["utterance", "frame"],
                "weights": self.model.weights}

    def models(self) -> list:
        return [self.model.info]

    def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                return_processed_audio: bool = False, *, sample_rate: int | None = None,
                preconvert: bool | None = None, filename: str | None = None) -> ClientResult:
        """`preconvert` and `filename` are accepted for parity with `EmoClient` and change nothing here."""
        from ..audio import decode_audio, processed_wav

        check_granularity(granularity)
        if self.engine is not None:
            waveform, result = self.engine.analyze_sync(audio, granularity=granularity,
                                                        return_embedding=return_embedding, sample_rate=sample_rate,
                                                        max_seconds=self.max_duration_s)
        else:
            waveform = decode_audio(audio, sample_rate=sample_rate, max_seconds=self.max_duration_s,
                                    min_samples=self.model.config.min_samples)
            result = self.model.analyze(waveform, granularity=granularity, return_embedding=return_embedding)
        fields = {name: getattr(result, name) for name in EmotionResult.__dataclass_fields__}
        return ClientResult(**fields, processed_audio=processed_wav(waveform) if return_processed_audio else None)

    def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                     progress: Callable[[float], None] | None = None, **upload_options) -> LongformResult:
        """`EmotionModel.analyze_long`. `EmoClient`'s upload options (chunk_size, parallel, ...) are accepted,
        so one script runs against both, and have nothing to do here."""
        return self.model.analyze_long(audio, granularity=granularity, return_embedding=return_embedding,
                                       progress=progress)


__all__: Sequence[str] = (
    "AsyncEmoClient", "AuthenticationError", "ClientResult", "EmoClient", "Job", "LocalClient", "RateLimitedError",
    "RetryPolicy", "ServiceUnavailableError", "preconvert",
)
