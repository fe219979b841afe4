"""API keys: which key a request presents and whether it opens the server, for the API and the web UI alike.

The API's middleware checks the key of every /v1/* call; the UI takes the same keys as the
password of its sign-in page. Both refuse with the API's error body (`refusal_response`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.responses import JSONResponse

from .errors import EmoserveError, retry_headers, status_for

KEY_PROTOCOL = "emoserve.key."  # a WebSocket subprotocol that carries the API key: what browsers can send


def presented_key(headers: Mapping[str, str], websocket: bool = False) -> str | None:
    """The key of `Authorization: Bearer KEY`, else of `X-API-Key: KEY` (header names in lower case), or, for a
    WebSocket handshake, of a subprotocol `emoserve.key.KEY` (a browser's WebSocket cannot set headers)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "x-api-key" in headers or not websocket:
        return headers.get("x-api-key")
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return next((p[len(KEY_PROTOCOL):] for p in offered if p.startswith(KEY_PROTOCOL)), None)


def key_is_valid(given: str | None, keys: list[str]) -> bool:
    """Constant-time against every key, so timing says nothing about which key or prefix matched."""
    if not given:
        return False
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


def refusal_response(error: EmoserveError) -> JSONResponse:
    """The API's error body, status and Retry-After for a refusal answered outside the API's error handlers."""
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=status_for(error.code), headers=retry_headers(error))
