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
