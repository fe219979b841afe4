"""Typed errors and the one table of error codes, shared by the library, the CLI, the API and the client.

Every refusal carries a `code` of `ERROR_CODES`, so a caller sees the same thing whether it uses
Python, the CLI or HTTP. The table gives each code its HTTP status (a WebSocket closes with 4000 +
that status), the description that docs/API.md and /openapi.json show, the typed error the client
raises for it and the Retry-After a refusal sends when it names no wait of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


class EmoserveError(Exception):
    """Base class: `code` is the API error code, `message` says what went wrong and what to do."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class AudioError(EmoserveError):
    """The audio cannot be used: empty, corrupt, unsupported, too long or too short."""

    code = "corrupt_audio"


class InvalidParameterError(EmoserveError):
    """A caller passed an option value that does not exist (e.g. granularity="word")."""

    code = "invalid_parameter"


class CheckpointError(EmoserveError):
    """A model directory or checkpoint file is not what the loader expects."""

    code = "invalid_checkpoint"


class ModelNotFoundError(EmoserveError):
    """A model name is unknown, or it is not cached and cannot be downloaded."""

    code = "model_not_found"


class AuthenticationError(EmoserveError):
    """No API key, or a wrong one (401): pass `api_key=` or set EMOSERVE_API_KEY."""

    code = "unauthorized"


class RateLimitedError(EmoserveError):
    """The per-key rate limit was hit (429): wait `retry_after` seconds."""

    code = "rate_limited"


class ServiceUnavailableError(EmoserveError):
    """The model is loading, the queue is full, or the model failed to load (503)."""

    code = "overloaded"


# ---- long audio: uploads and jobs (emoserve.jobs.store, emoserve.jobs.runner) ----


class NotFoundError(EmoserveError):
    """No upload or job has this id (or it was deleted)."""

    code = "not_found"


class ConflictError(EmoserveError):
    """The request contradicts the upload's state: a chunk of the wrong size, a tus offset that moved."""

    code = "conflict"


class UploadIncompleteError(ConflictError):
    """Completing an upload with chunks missing; `details["missing"]` lists them, so the client can resume."""

    code = "upload_incomplete"


class UploadExpiredError(EmoserveError):
    """The upload sat idle past its expiry and its data was removed: start a new one."""

    code = "upload_expired"


class ChecksumMismatchError(EmoserveError):
    """The bytes received do not match the checksum the client sent: re-send them."""

    code = "checksum_mismatch"


class PayloadTooLargeError(EmoserveError):
    """More bytes than a chunk, an upload or a request may carry."""

    code = "payload_too_large"


class QuotaExceededError(EmoserveError):
    """Too many uploads in flight, or too many bytes held for them: retry when some finish or expire."""

    code = "quota_exceeded"


class InsufficientStorageError(EmoserveError):
    """The disk (or the disk quota of uploads) is full: nothing of the request was kept (507).

    Raised for the uploads quota and for ENOSPC/EDQUOT and SQLite's "disk is full" alike, so a
    full disk is a typed refusal that says what to do, never a 500.
    """

    code = "insufficient_storage"


class RequestTimeoutError(EmoserveError):
    """A request body stopped arriving (no byte for the idle timeout): what came is not kept (408)."""

    code = "request_timeout"


class UploadBodiesBusyError(EmoserveError):
    """As many upload bodies as allowed are arriving already: retry after `retry_after` seconds (503)."""

    code = "overloaded"


# ---- the table ----


@dataclass(frozen=True)
class ErrorKind:
    """What a code means on every surface."""

    status: int  # the HTTP status; a WebSocket closes with 4000 + status
    description: str  # when it happens and what to do (docs/API.md's error table, /openapi.json)
    error: type[EmoserveError] = EmoserveError  # the typed error the client raises for it
    retry_after_s: int | None = None  # the Retry-After sent when the error itself names no wait


ERROR_CODES: dict[str, ErrorKind] = {
    "empty_audio": ErrorKind(400, "the audio file is empty (0 bytes)", AudioError),
    "unsupported_format": ErrorKind(400, "the container or codec is not one emoserve decodes", AudioError),
    "corrupt_audio": ErrorKind(400, "the audio is undecodable, cut short, or has NaN/Inf samples", AudioError),
    "invalid_parameter": ErrorKind(400, "a field, header, query or option value is wrong or unknown",
                                   InvalidParameterError),
    "too_short": ErrorKind(400, "the audio is shorter than the model's minimum (`min_samples`)", AudioError),
    "checksum_mismatch": ErrorKind(400, "bytes do not match their checksum and nothing of them was kept; "
                                        "a tus PATCH answers 460", ChecksumMismatchError),
    "unauthorized": ErrorKind(401, "API keys are configured and none or a wrong one was sent", AuthenticationError),
    "not_found": ErrorKind(404, "no such upload, job, route or file", NotFoundError),
    "method_not_allowed": ErrorKind(405, "the route does not take this method"),
    "idle_timeout": ErrorKind(408, "a stream sent nothing for EMOSERVE_STREAM_IDLE_TIMEOUT_S (close 4408)"),
    "request_timeout": ErrorKind(408, "an upload body stopped arriving for EMOSERVE_UPLOAD_BODY_TIMEOUT_S: nothing "
                                      "of it was kept and the connection is closed", RequestTimeoutError),
    "upload_incomplete": ErrorKind(409, "chunks are missing (`missing`) or a tus upload is short (`offset`): "
                                        "send them", UploadIncompleteError),
    "conflict": ErrorKind(409, "the request contradicts the upload's state: a chunk of the wrong size "
                               "(`expected_size`), a stale tus offset (`offset`), a job still using it",
                          ConflictError),
    "upload_expired": ErrorKind(410, "the upload sat idle past its expiry and its data is gone: upload again",
                                UploadExpiredError),
    "unsupported_tus_version": ErrorKind(412, "a tus request without `Tus-Resumable: 1.0.0`"),
    "audio_too_long": ErrorKind(413, "longer than the duration limit, or than fits the model's memory: use the "
                                     "upload API", AudioError),
    "payload_too_large": ErrorKind(413, "more bytes than a request, a chunk or an upload may carry (`max_bytes`)",
                                   PayloadTooLargeError),
    "unsupported_media_type": ErrorKind(415, "a tus PATCH without `Content-Type: application/offset+octet-stream`"),
    "rate_limited": ErrorKind(429, "the per-key rate limit, or too many wrong keys from this address: wait "
                                   "Retry-After seconds", RateLimitedError, retry_after_s=30),
    "quota_exceeded": ErrorKind(429, "too many uploads in flight, or too many bytes held for them: wait "
                                     "Retry-After seconds", QuotaExceededError, retry_after_s=30),
    "internal_error": ErrorKind(500, "a bug, or NaN/Inf from the model: quote the request id of the message"),
    "model_loading": ErrorKind(503, "the model is loading or warming up: retry after Retry-After seconds",
                               ServiceUnavailableError, retry_after_s=1),
    "model_unavailable": ErrorKind(503, "the model failed to load: fix the deployment", ServiceUnavailableError,
                                   retry_after_s=1),
    "overloaded": ErrorKind(503, "the queue or the stream limit is full: retry after Retry-After seconds",
                            ServiceUnavailableError, retry_after_s=1),
    "insufficient_storage": ErrorKind(507, "the disk or the uploads' disk quota is full: nothing of the request was "
                                           "stored; retry later, delete uploads you no longer need",
                                      InsufficientStorageError),
    # the library's and the CLI's own: the server never sends them (a model that cannot load is model_unavailable)
    "invalid_checkpoint": ErrorKind(500, "library and CLI only: a model directory or checkpoint is not what the "
                                         "loader expects", CheckpointError),
    "model_not_found": ErrorKind(404, "library and CLI only: the model name is unknown, or not cached and not "
                                      "downloadable", ModelNotFoundError),
    "ui_unavailable": ErrorKind(500, "library and CLI only: the web UI needs Gradio (`pip install "
                                     "'emoserve[ui]'`)"),
}

# The code that stands for a bare status: errors raised by the web framework, answers without our JSON body.
CODE_BY_STATUS: dict[int, str] = {400: "invalid_parameter", 401: "unauthorized", 404: "not_found",
                                  405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                                  429: "rate_limited", 503: "overloaded"}


def status_for(code: str) -> int:
    """The HTTP status of a code; 500 for a code outside the table (a bug: tests keep every code in it)."""
    kind = ERROR_CODES.get(code)
    return kind.status if kind is not None else 500


def retry_headers(error: EmoserveError) -> dict | None:
    """`Retry-After` for an HTTP answer of `error`: its own wait, else its code's default; None when it has none."""
    retry_after = getattr(error, "retry_after", None) or error.details.get("retry_after")
    if retry_after is None:
        kind = ERROR_CODES.get(error.code)
        retry_after = kind.retry_after_s if kind is not None else None
    return {"Retry-After": str(max(1, round(float(retry_after))))} if retry_after is not None else None


def code_for_status(status: int) -> str:
    return CODE_BY_STATUS.get(status, "invalid_parameter" if 400 <= status < 500 else "internal_error")


def error_for(code: str, message: str, details: dict | None = None) -> EmoserveError:
    """The typed error for a code received from the server (a job's error, an error body)."""
    kind = ERROR_CODES.get(code)
    return (kind.error if kind is not None else EmoserveError)(message, code=code, details=details)
