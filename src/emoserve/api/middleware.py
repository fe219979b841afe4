"""One ASGI middleware for what every request shares: request id, auth, rate limit, access log, metrics.

It sits outermost (inside CORS), so even a crash below it answers JSON with an X-Request-ID.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import re
import threading
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .metrics import ServiceMetrics

access_log = logging.getLogger("emoserve.access")
error_log = logging.getLogger("emoserve.error")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
OPEN_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")


class TokenBucket:
    """Per-client request budget: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when allowed, else the seconds to wait."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[client] = (tokens - 1, now)
                return 0.0
            self.buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate


def presented_key(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def key_is_valid(given: str | None, keys: list[str]) -> bool:
    """Constant-time against every key, so timing says nothing about which key or prefix matched."""
    if not given:
        return False
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, api_keys: list[str], rate_limit_per_minute: int):
        self.app = app
        self.metrics = metrics
        self.api_keys = api_keys
        self.limiter = TokenBucket(rate_limit_per_minute) if rate_limit_per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id", "")
        request_id = given_id if REQUEST_ID.match(given_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        path = scope["path"]
        client = (scope.get("client") or ("-", 0))[0]
        denial = self.check_access(path, headers, client)
        if denial is not None and scope["type"] == "http":
            await denial(scope, receive, send_with_id)
        elif denial is not None:
            await send({"type": "websocket.close", "code": 4401 if denial.status_code == 401 else 4429})
            status_holder["status"] = denial.status_code
        else:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                error_log.exception("unhandled error on %s %s", scope.get("method", "WS"), path,
                                    extra={"request_id": request_id})
                if scope["type"] == "http":
                    response = error_response("internal_error", f"internal error; quote request id {request_id} "
                                                                "when reporting it", 500)
                    with contextlib.suppress(RuntimeError):  # the response had already started: nothing to send
                        await response(scope, receive, send_with_id)
        self.log(scope, request_id, client, status_holder["status"], time.perf_counter() - started)

    def check_access(self, path: str, headers: Headers, client: str):
        if not path.startswith("/v1/"):
            return None
        given = presented_key(headers)
        if self.api_keys and not key_is_valid(given, self.api_keys):
            return error_response("unauthorized", "this server needs an API key: send `Authorization: Bearer KEY` "
                                                  "or `X-API-Key: KEY`" if not given else "the API key is not valid")
        if self.limiter is not None:
            wait = self.limiter.take(given if self.api_keys else client)
            if wait > 0:
                return error_response("rate_limited", f"rate limit reached; retry in {math.ceil(wait)} s",
                                      headers={"Retry-After": str(math.ceil(wait))})
        return None

    def log(self, scope: Scope, request_id: str, client: str, status: int, seconds: float) -> None:
        route = scope.get("route")
        route_path = getattr(route, "path", None) or ("unmatched" if status == 404 else scope["path"])
        method = scope.get("method", "WS")
        state = scope.get("state", {})
        audio_s = state.get("audio_seconds")
        if audio_s:
            self.metrics.audio_seconds.inc(audio_s)
        self.metrics.observe_request(route_path, method, status, seconds)
        access_log.info("%s %s %s", method, scope["path"], status, extra={
            "request_id": request_id, "client": client, "method": method, "path": scope["path"], "status": status,
            "latency_ms": round(seconds * 1000, 2), "audio_s": round(audio_s, 3) if audio_s else 0.0})
