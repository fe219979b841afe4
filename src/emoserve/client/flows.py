"""Every call of the HTTP clients, written once as a *flow*, without I/O of its own.

A flow is a generator that yields the HTTP requests (`Call`), pauses (`Sleep`) and parallel
sub-flows (`Together`) it needs and gets their answers back. `EmoClient` runs flows with blocking
httpx and threads, `AsyncEmoClient` with asyncio (`http`), so both behave the same and the retry
policy, the error mapping and the upload protocol exist in one place.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import random
import struct
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
import numpy as np

from .. import wire
from ..errors import EmoserveError, InvalidParameterError, NotFoundError, UploadExpiredError
from ..files import file_sha256
from ..inference.results import (
    LongformResult,
    SplitLongformResult,
    SplitResult,
    check_channel_mode,
    check_granularity,
    parse_channel_names,
)
from ..model.config import SAMPLE_RATE
from .parse import (
    ClientResult,
    Job,
    accepted_job_from_json,
    job_from_wire,
    models_from_json,
    result_from_response,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PRECONVERT_FORMATS = {"flac": ("FLAC", "PCM_16", "audio/flac", ".flac"), "wav": ("WAV", "PCM_16", "audio/wav", ".wav")}
JOB_POLL_S = 30.0  # the longest single `?wait=` long-poll; the server answers earlier when the job ends
# refusals that pass: 503 loading/overloaded, 429 rate limit or upload quota (model_unavailable is a broken
# deployment: retrying won't help)
RETRYABLE_CODES = {"model_loading", "overloaded", "rate_limited", "quota_exceeded"}
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # the request never reached the server
DECODERS = ("soundfile", "av", "soxr")  # what `preconvert` decodes and resamples with: the `server` extra's


def is_retryable(error: Exception, idempotent: bool = True) -> bool:
    """Whether sending the call again is safe and may succeed. A call that is not idempotent is sent again only
    when it surely had no effect: it never reached the server, or the server refused it (429, 503)."""
    if isinstance(error, httpx.TransportError):
        return idempotent or isinstance(error, UNSENT)
    return isinstance(error, EmoserveError) and error.code in RETRYABLE_CODES


# ---- audio to send ----


@functools.cache
def can_preconvert() -> bool:
    """Whether this install decodes audio (the `server` extra). The light client cannot: it sends files as they
    are, and says so once."""
    missing = [name for name in DECODERS if importlib.util.find_spec(name) is None]
    if missing:
        log.warning("preconvert is off: it needs %s (pip install 'emoserve[server]'); files are sent as they are "
                    "and the server decodes them", ", ".join(missing))
    return not missing


def preconvert(source: Any, target: BinaryIO, fmt: str = "flac", sample_rate: int | None = None) -> None:
    """Decode, mix to mono and resample to 16 kHz (`emoserve.audio`, streamed) into 16-bit FLAC or WAV.

    The server then skips decoding (a 16 kHz mono PCM WAV or FLAC is its fast path), and compressed
    sources shrink less than they would as WAV: FLAC keeps uploads small. Needs the `server` extra's decoders.
    """
    import soundfile as sf

    from ..audio import stream_audio

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
        return filename or "audio.wav", float_wav(audio, sample_rate or SAMPLE_RATE), "audio/wav"
    if isinstance(audio, str | Path):
        return filename or Path(audio).name, Path(audio).read_bytes(), "application/octet-stream"
    if isinstance(audio, bytes | bytearray | memoryview):
        return filename or "audio", bytes(audio), "application/octet-stream"
    if hasattr(audio, "read"):
        return filename or Path(getattr(audio, "name", "audio")).name, audio.read(), "application/octet-stream"
    raise InvalidParameterError(f"audio must be a path, bytes, a file object or a numpy array, not {type(audio)}")


def float_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """A 32-bit float WAV of (frames,) or (frames, channels) samples, written here: the light client has no
    soundfile."""
    data = np.ascontiguousarray(samples, dtype="<f4")
    channels = 1 if data.ndim == 1 else data.shape[1]
    payload = data.tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, sample_rate, sample_rate * channels * 4, channels * 4, 32)  # 3: float
    return b"".join([b"RIFF", struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(payload)), b"WAVE",
                     b"fmt ", struct.pack("<I", len(fmt)), fmt, b"data", struct.pack("<I", len(payload)), payload])


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
    """One HTTP request, sent once (`retrying` adds the retry policy); `ok` lists non-2xx statuses to accept;
    `idempotent` False: sending it twice does something twice (a read timeout then ends the retries)."""

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
    idempotent: bool = True


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
    """503 `model_loading`/`overloaded`, 429 `rate_limited`/`quota_exceeded` and connection errors are retried
    `retries` times, waiting Retry-After when the server gives it (seconds or an HTTP date), else
    `backoff` × 2^attempt (with jitter), at most `max_delay`. A call that is not idempotent (upload init) is
    not sent again after a read timeout or a dropped connection: the server may have acted on it."""

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
            if attempt == policy.retries or not is_retryable(e, call.idempotent):
                raise
            wait = policy.delay(attempt, e)
            log.info("%s %s: %s; retry %d of %d in %.1fs", call.method, call.url, e, attempt + 1, policy.retries,
                     wait)
            yield Sleep(wait)


class Flows:
    """What both clients do, as flows; the subclasses only run them."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, preconvert: bool,
                 preconvert_format: str, resume_dir: str | Path | None):
        from ..config import ModelConfig

        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.policy = RetryPolicy(retries=retries)
        self.preconvert = preconvert
        if preconvert_format not in PRECONVERT_FORMATS:
            raise InvalidParameterError(f"preconvert_format must be {' or '.join(PRECONVERT_FORMATS)}")
        self.preconvert_format = preconvert_format
        self.resume_dir = Path(resume_dir) if resume_dir else ModelConfig().cache / "client-uploads"

    def call(self, method: str, url: str, **kwargs) -> Flow[httpx.Response]:
        return retrying(Call(method, url, **kwargs), self.policy)

    def conversion(self, preconvert: bool | None) -> str | None:
        """The format to pre-convert to: None when not asked for, or when this install cannot decode."""
        wanted = self.preconvert if preconvert is None else preconvert
        return self.preconvert_format if wanted and can_preconvert() else None

    def health_flow(self) -> Flow[dict]:
        response = yield from self.call("GET", "/health", ok=(503,))
        return response.json()

    def models_flow(self) -> Flow[list]:
        response = yield from self.call("GET", "/v1/models")
        return models_from_json(response.content)

    def analyze_flow(self, audio: Any, granularity: str, return_embedding: bool, return_processed_audio: bool,
                     sample_rate: int | None, preconvert: bool | None, filename: str | None, channels: str = "mix",
                     channel_names: str | Sequence[str] | None = None) -> Flow[ClientResult | SplitResult]:
        check_granularity(granularity)
        split = check_channel_mode(channels) == "split"
        convert = None if split else self.conversion(preconvert)  # preconverting mixes to mono: split travels as is
        name, payload, mime = encode_upload(audio, sample_rate, convert, filename)
        data = {"granularity": granularity, "return_embedding": str(return_embedding).lower(),
                "return_processed_audio": str(return_processed_audio).lower(), "channels": channels}
        names = parse_channel_names(channel_names)
        if names is not None:
            data["channel_names"] = ",".join(names)
        response = yield from self.call("POST", "/v1/analyze", data=data, files={"audio_file": (name, payload, mime)},
                                        headers={"Accept": "multipart/mixed, application/json"})
        return result_from_response(response)

    # ---- long audio: upload (parallel, resumable), job, wait ----

    def submit_long_flow(self, audio: Any, granularity: str, return_embedding: bool, chunk_size: int | None,
                         parallel: int, callback_url: str | None, preconvert: bool | None,
                         resume: bool, channels: str = "mix",
                         channel_names: str | Sequence[str] | None = None) -> Flow[Job]:
        job, _ = yield from self.start_job_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                                callback_url, preconvert, resume, channels, channel_names)
        return job

    def start_job_flow(self, audio: Any, granularity: str, return_embedding: bool, chunk_size: int | None,
                       parallel: int, callback_url: str | None, preconvert: bool | None,
                       resume: bool, channels: str = "mix",
                       channel_names: str | Sequence[str] | None = None) -> Flow[tuple[Job, ResumeFile]]:
        check_granularity(granularity)
        if parallel < 1:
            raise InvalidParameterError("parallel must be at least 1")
        split = check_channel_mode(channels) == "split"
        convert = None if split else self.conversion(preconvert)  # preconverting mixes to mono: split travels as is
        with StagedFile(audio, convert) as (path, filename):
            upload_id, resume_file = yield from self.upload_flow(path, filename, chunk_size, parallel, resume)
            body = {"upload_id": upload_id, "granularity": granularity, "return_embedding": return_embedding,
                    "callback_url": callback_url}
            if split:
                body |= {"channels": channels, "channel_names": parse_channel_names(channel_names)}
            response = yield from self.call("POST", "/v1/upload/complete", json=body)
        return accepted_job_from_json(response.content), resume_file

    def upload_flow(self, path: Path, filename: str, chunk_size: int | None, parallel: int,
                    resume: bool) -> Flow[tuple[str, ResumeFile]]:
        """Send the file in chunks, `parallel` at a time, continuing an earlier upload of the same bytes."""
        sha256 = file_sha256(path)
        total_size = path.stat().st_size
        resume_file = ResumeFile(self.resume_dir, self.base_url, sha256)
        state = resume_file.load() if resume else None
        upload: wire.UploadStatus | None = None
        if state is not None:
            try:
                response = yield from self.call("GET", f"/v1/upload/{state['upload_id']}")
                upload = wire.UploadStatus.model_validate_json(response.content)
            except (NotFoundError, UploadExpiredError):
                upload = None
            if upload is not None and upload.state not in ("uploading", "complete"):
                upload = None
        if upload is None:
            init = {"filename": filename, "total_size": total_size, "sha256": sha256}
            if chunk_size is not None:
                init["chunk_size"] = chunk_size
            # not idempotent: each init reserves an upload (and its share of the quotas) until it expires
            response = yield from self.call("POST", "/v1/upload/init", json=init, idempotent=False)
            upload = wire.UploadCreated.model_validate_json(response.content)
            resume_file.save({"upload_id": upload.upload_id, "chunk_size": upload.chunk_size,
                              "total_size": total_size, "sha256": sha256, "base_url": self.base_url})
        else:
            log.info("resuming upload %s: %d of %d chunks to send", upload.upload_id, len(upload.missing),
                     upload.chunk_count)
        missing = upload.missing if upload.state != "complete" else []
        yield Together([self.chunk_flow(upload.upload_id, path, index, upload.chunk_size) for index in missing],
                       parallel)
        return upload.upload_id, resume_file

    def chunk_flow(self, upload_id: str, path: Path, index: int, chunk_size: int) -> Flow[wire.ChunkReceived]:
        data = read_chunk(path, index, chunk_size)  # read when the flow starts: `parallel` chunks in memory at most
        response = yield from self.call("PUT", f"/v1/upload/{upload_id}/chunk/{index}", content=data,
                                        headers={"Content-Type": "application/octet-stream",
                                                 "X-Chunk-SHA256": hashlib.sha256(data).hexdigest()})
        return wire.ChunkReceived.model_validate_json(response.content)

    def job_flow(self, job_id: str, wait: float | None = None) -> Flow[Job]:
        params = {"wait": f"{wait:.3f}"} if wait else None  # plain decimal: the server refuses 1e-05
        timeout = self.timeout + (wait or 0.0)
        response = yield from self.call("GET", f"/v1/jobs/{job_id}", params=params, timeout=timeout)
        body = wire.JobStatus.model_validate_json(response.content)
        embeddings: dict[int | None, bytes] = {}
        if body.status == "succeeded" and body.options.return_embedding:
            split = isinstance(body.result, wire.SplitLongformResult)
            for channel in [c.channel for c in body.result.channels] if split else [None]:
                params = {"channel": str(channel)} if channel is not None else None
                embeddings[channel] = (yield from self.call("GET", f"/v1/jobs/{job_id}/embedding.npy",
                                                            params=params)).content
        return job_from_wire(body, embeddings)

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
                          timeout: float | None, channels: str = "mix",
                          channel_names: str | Sequence[str] | None = None,
                          ) -> Flow[LongformResult | SplitLongformResult]:
        job, resume_file = yield from self.start_job_flow(audio, granularity, return_embedding, chunk_size,
                                                          parallel, callback_url, preconvert, resume, channels,
                                                          channel_names)
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
