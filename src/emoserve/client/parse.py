"""The server's answers → the library's types: results, jobs and typed errors (the API's JSON, docs/API.md)."""

from __future__ import annotations

import base64
import datetime
import email.utils
import io
import json
import time
from dataclasses import dataclass, field

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
from ..inference.results import EmotionResult, LongformResult, Overall, Segment
from ..labels import LABELS

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


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delay-seconds, or an HTTP date (proxies and gateways send those);
    None when absent or unreadable (the retry policy's backoff then applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
