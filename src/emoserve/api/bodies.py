"""Upload bodies (chunk PUTs, tus PATCHes) read as they arrive: bounded pieces, an idle timeout, a bound on bodies.

Each piece goes to the store's writer (to disk) before the next is read, so a body never sits
whole in memory; a client that stops sending is cut off after `upload_body_timeout_s` (408), and
at most `upload_max_concurrent_bodies` bodies are received at once (more: 503 `overloaded` with
Retry-After), so slow or stalled clients hold neither memory nor an unbounded number of open
files and threads.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
from starlette.requests import Request

from ..errors import RequestTimeoutError, UploadBodiesBusyError

WRITE_PIECE_BYTES = 256 * 1024  # the most handed to the disk writer at once (servers hand us ≤ 64 KiB anyway)
BUSY_RETRY_AFTER_S = 2


class BodySlots:
    """At most `limit` upload bodies arriving at once; one more is refused before any of it is read."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.lock = threading.Lock()

    @contextmanager
    def claim(self) -> Iterator[None]:
        with self.lock:
            if self.in_use >= self.limit:
                raise UploadBodiesBusyError(f"{self.limit} upload bodies are arriving already, the most this server "
                                            "takes at once: retry shortly", details={"retry_after": BUSY_RETRY_AFTER_S})
            self.in_use += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_use -= 1


async def body_pieces(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body as it arrives, in pieces of at most WRITE_PIECE_BYTES; 408 when no byte comes for the timeout."""
    stream = request.stream()
    while True:
        with anyio.move_on_after(idle_timeout_s) as waiting:
            data = await anext(stream, None)
        if waiting.cancelled_caught:
            raise RequestTimeoutError(f"no byte of the body arrived for {idle_timeout_s:g} s, so the request was "
                                      "cut off: send it again (tus: HEAD the upload and resume from its offset)")
        if data is None:
            return
        for start in range(0, len(data), WRITE_PIECE_BYTES):
            yield data[start: start + WRITE_PIECE_BYTES]
