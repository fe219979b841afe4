"""One ASGI middleware for what every request shares: request id, auth, rate limit, access log, metrics.

It sits outermost (inside CORS), so even a crash below it answers JSON with an X-Request-ID.
Metrics are labelled by route template and a known method only: whatever paths and methods
clients invent, the set of series stays fixed and no id ever reaches /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import key_is_valid, presented_key
from ..errors import EmoserveError, retry_headers
from ..logs import REQUEST_ID
from ..metrics import ServiceMetrics
from ..throttle import Throttle, client_address
from .errors import error_response

access_log = logging.getLogger("emoserve.access")
error_log = logging.getLogger("emoserve.error")

VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DENIAL_EXTENSION = "websocket.http.response"  # ASGI: answer a refused websocket handshake with an HTTP response
METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of every request no route answered (unknown paths, refusals)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "WS"})  # other methods: "other"
STREAM_PROTOCOL = "emoserve"  # the WebSocket subprotocol a stream accepts with, when the client offers it


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, api_keys: list[str], metrics_key: str,
                 throttle: Throttle):
        self.app = app
        self.metrics = metrics
        self.api_keys = api_keys
        self.metrics_keys = [metrics_key] if metrics_key else []
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given_id = headers.get("x-request-id", "")
        request_id = given_id if VALID_REQUEST_ID.match(given_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        context = REQUEST_ID.set(request_id)  # every log line of this request names it (logs.py)
        try:
            await self.handle(scope, receive, send, headers, request_id)
        finally:
            REQUEST_ID.reset(context)

    async def handle(self, scope: Scope, receive: Receive, send: Send, headers: Headers, request_id: str) -> None:
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status_holder["status"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            elif message["type"] == "websocket.accept":
                status_holder["status"] = 101
            await send(message)

        path = scope["path"]
        root_path = scope.get("root_path", "")  # before routing: a mount below extends it
        client = client_address(scope)
        denial = self.denial(path, headers, client, scope["type"] == "websocket")
        if denial is not None and (scope["type"] == "http" or DENIAL_EXTENSION in scope.get("extensions", {})):
            await denial(scope, receive, send_with_id)  # a real 401/429 with the JSON body, websockets too
        elif denial is not None:  # a server without the denial extension: close codes 4401/4429
            await send({"type": "websocket.close", "code": 4000 + denial.status_code})
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
        self.log(scope, root_path, request_id, client, status_holder["status"], time.perf_counter() - started)

    def denial(self, path: str, headers: Headers, client: str, websocket: bool) -> Response | None:
        """The 401/429 answer to a request that may not pass, or None."""
        try:
            self.check_access(path, headers, client, websocket)
        except EmoserveError as e:
            return error_response(e.code, e.message, headers=retry_headers(e))
        return None

    def check_access(self, path: str, headers: Headers, client: str, websocket: bool = False) -> None:
        """Raise the refusal of a request: no or a wrong key (401), or a spent budget (429).

        An address that has spent its failed-key budget is refused before its key is even compared."""
        keys = self.required_keys(path)
        given = presented_key(headers, websocket)
        if keys:
            self.throttle.check_sign_in(client)
            if not key_is_valid(given, keys):
                if given:
                    self.throttle.sign_in_failed(client)
                raise EmoserveError("the API key is not valid" if given else "this server needs an API key: send "
                                    "`Authorization: Bearer KEY` or `X-API-Key: KEY` (a browser's WebSocket: the "
                                    "subprotocols `emoserve` and `emoserve.key.KEY`)", code="unauthorized")
        if path.startswith("/v1/"):
            self.throttle.take_request(given if keys else client)

    def required_keys(self, path: str) -> list[str]:
        return required_keys(path, self.api_keys, self.metrics_keys)

    def log(self, scope: Scope, root_path: str, request_id: str, client: str, status: int, seconds: float) -> None:
        method = scope.get("method", "WS")
        state = scope.get("state", {})
        audio_s = state.get("audio_seconds")
        if audio_s:
            self.metrics.audio_seconds.inc(audio_s)
        self.metrics.observe_request(route_template(scope, root_path), method if method in METHODS else "other",
                                     status, seconds)
        access_log.info("%s %s %s", method, scope["path"], status, extra={
            "request_id": request_id, "client": client, "method": method, "path": scope["path"], "status": status,
            "latency_ms": round(seconds * 1000, 2), "audio_s": round(audio_s, 3) if audio_s else 0.0})


def required_keys(path: str, api_keys: list[str], metrics_keys: list[str]) -> list[str]:
    """The keys that open `path` (empty: open to all): the API keys for /v1/*, the metrics key for /metrics."""
    if path.startswith("/v1/"):
        return api_keys
    return metrics_keys if path == METRICS_PATH else []


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key: `Authorization: Bearer KEY`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key: `X-API-Key: KEY`"},
}


def secure_openapi(schema: dict, api_keys: list[str], metrics_keys: list[str]) -> None:
    """Declare how keys are sent (the /docs Authorize button) on the operations that need one here."""
    secured = [operation for path, operations in schema.get("paths", {}).items()
               if required_keys(path, api_keys, metrics_keys) for operation in operations.values()]
    if secured:
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for operation in secured:
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]


def route_template(scope: Scope, root_path: str) -> str:
    """The path template of the route that answered (a mounted app's under its mount), else `unmatched`."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    return scope.get("root_path", "")[len(root_path):] + template
