"""Requests for the store's routes (uploads, tus, jobs), sent from any ingress replica to the one store owner.

The ingress replicas share no disk: the SQLite store and the data directory belong to one `Store`
replica, which runs the same app. `ForwardToOwner` (ASGI middleware on the ingress) reads such a
request whole (method, path, headers, body bytes), calls the owner through its DeploymentHandle,
and answers with what the owner's app answered (status, headers, body bytes). `call_app` is the
owner's side: one HTTP request through an ASGI app in this process, without a socket. Access
checks, rate limits and error bodies are the owner app's own, so a forwarded answer is the one a
single-process server gives.

A forwarded body is held whole in the ingress's memory (a handle call carries bytes, not a
stream), so it is bounded here, before the owner sees it: at most `max_body_bytes` (one upload
chunk, `EMOSERVE_UPLOAD_MAX_CHUNK_BYTES`, plus room for headers; larger is 413 `payload_too_large`
as soon as it is declared or has arrived), and cut off with 408 when no byte comes for the upload
body timeout, as the single-process server does. tus clients therefore send PATCHes of at most one
chunk on Ray (tus-js-client `chunkSize`, tuspy `chunk_size`); a single-process server takes a
whole file in one PATCH.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from ..api.errors import error_response
from ..api.numbers import declared_length
from ..errors import EmoserveError, PayloadTooLargeError, RequestTimeoutError, retry_headers
from .engine import RETRY_AFTER_S

log = logging.getLogger(__name__)

Scope = dict[str, Any]


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    scheme: str
    server: tuple[str, int] | None
    client: tuple[str, int] | None
    body: bytes

    def scope(self) -> Scope:
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": self.method,
                "scheme": self.scheme, "path": self.path, "raw_path": self.raw_path, "root_path": "",
                "query_string": self.query_string, "headers": self.headers, "server": self.server,
                "client": self.client}


@dataclass(frozen=True)
class ForwardedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def read_request(scope: Scope, receive, max_body_bytes: int, idle_timeout_s: float) -> ForwardedRequest:
    """The request with its whole body: 413 past `max_body_bytes`, 408 when no byte comes for `idle_timeout_s`."""
    declared = declared_length(Headers(scope=scope))
    if declared is not None and declared > max_body_bytes:
        raise too_large(declared, max_body_bytes)
    chunks, received = [], 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), idle_timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(f"no byte of the body arrived for {idle_timeout_s:g} s, so the request was "
                                      "cut off: send it again") from None
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        received += len(chunks[-1])
        if received > max_body_bytes:
            raise too_large(received, max_body_bytes)
        if not message.get("more_body", False):
            break
    return ForwardedRequest(scope["method"], scope["path"], scope.get("raw_path") or scope["path"].encode(),
                            scope.get("query_string", b""), list(scope["headers"]), scope.get("scheme", "http"),
                            tuple(scope["server"]) if scope.get("server") else None,
                            tuple(scope["client"]) if scope.get("client") else None, b"".join(chunks))


def too_large(size: int, cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"on Ray, one request to the upload routes carries at most {cap} bytes ({size} "
                                "sent): send the file in chunks (tus: a chunk size) of at most "
                                "EMOSERVE_UPLOAD_MAX_CHUNK_BYTES", details={"max_bytes": cap})


async def call_app(app, request: ForwardedRequest) -> ForwardedResponse:
    """One request through `app`, its whole answer collected (the owner's side of forwarding)."""
    delivered = False
    start: dict = {}
    body: list[bytes] = []

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # the caller never goes away: wait until cancelled

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(request.scope(), receive, send)
    return ForwardedResponse(start["status"], [tuple(h) for h in start.get("headers", [])], b"".join(body))


class ForwardToOwner:
    """ASGI middleware: requests under `prefixes` go to the owner (a DeploymentHandle with `handle`)."""

    def __init__(self, app, owner: Any, prefixes: Sequence[str], max_body_bytes: int, idle_timeout_s: float):
        self.app, self.owner, self.prefixes = app, owner, tuple(prefixes)
        self.max_body_bytes, self.idle_timeout_s = max_body_bytes, idle_timeout_s

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        try:
            request = await read_request(scope, receive, self.max_body_bytes, self.idle_timeout_s)
            response = await self.call_owner(request)
        except EmoserveError as e:
            await error_response(e.code, e.message, headers=retry_headers(e), details=e.details)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
        await send({"type": "http.response.body", "body": response.body})

    async def call_owner(self, request: ForwardedRequest) -> ForwardedResponse:
        """The owner's answer; a 503 to retry while the owner is being replaced or is busy."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

        try:
            return await self.owner.handle.remote(request)
        except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError) as e:
            log.warning("the store owner did not answer %s %s: %s", request.method, request.path, type(e).__name__)
            raise EmoserveError("the upload store is restarting or busy; retry shortly", code="overloaded",
                                details={"retry_after": RETRY_AFTER_S}) from e
