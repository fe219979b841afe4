"""What routes take from the app: the running service (the composition root), and work cancelled with its client.

Access (API keys, rate limits) is checked before any route runs, by `middleware.RequestContextMiddleware`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import HTTPConnection, Request

from ..runtime import Service

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


def service_of(connection: HTTPConnection) -> Service:
    """The service of the app a request or WebSocket came to (`create_app` puts it there)."""
    return connection.app.state.service


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, but cancel it (queued work is then dropped before compute) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            return None
