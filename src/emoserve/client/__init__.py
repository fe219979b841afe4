"""The Python client: the HTTP API (sync or async, on httpx) or a local model, with the library's result types.

    with EmoClient("http://127.0.0.1:8000") as client:
        r = client.analyze("clip.wav", granularity="frame", return_embedding=True)
        r.emotion, r.scores, r.embedding                      # as from EmotionModel.analyze
        timeline = client.analyze_long("meeting.mp3")         # chunked, parallel, resumable upload + job

    client = EmoClient.local(EmotionModel.from_pretrained("random:tiny"))   # same methods, no server

`flows` writes every call once, without I/O; `http` runs them (`EmoClient`, `AsyncEmoClient`);
`parse` turns the server's answers into results and typed errors; `local` is `LocalClient`.
"""

from ..errors import AuthenticationError, RateLimitedError, ServiceUnavailableError
from .flows import PRECONVERT_FORMATS, RetryPolicy, preconvert
from .http import DEFAULT_URL, AsyncEmoClient, EmoClient
from .local import LocalClient
from .parse import ClientResult, Job

__all__ = [
    "DEFAULT_URL",
    "PRECONVERT_FORMATS",
    "AsyncEmoClient",
    "AuthenticationError",
    "ClientResult",
    "EmoClient",
    "Job",
    "LocalClient",
    "RateLimitedError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "preconvert",
]
