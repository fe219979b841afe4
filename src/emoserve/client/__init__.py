"""The Python client (moved here from emoserve/client.py; split in the next commit)."""

from .flows import *  # noqa: F403
from .flows import (  # noqa: F401
    DEFAULT_URL,
    PRECONVERT_FORMATS,
    AsyncEmoClient,
    AuthenticationError,
    ClientResult,
    EmoClient,
    Job,
    LocalClient,
    RateLimitedError,
    ResumeFile,
    RetryPolicy,
    ServiceUnavailableError,
    file_sha256,
    parse_multipart,
    preconvert,
)
