"""Typed errors shared by the library, the CLI and the API.

Every refusal carries a `code` equal to an error code of the HTTP API (docs/API.md), so a
caller sees the same thing whether it uses Python, the CLI or HTTP. The API maps codes to
statuses in one place (`emoserve.api.errors`).
"""


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
