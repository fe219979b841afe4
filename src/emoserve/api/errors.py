"""Typed errors → the JSON error body, in one place.

Every error the service answers is `{"error": {"code": ..., "message": ...}}` with the status of
docs/API.md's table. Unknown failures are a 500 `internal_error` whose message never leaks a
stack trace; the trace goes to error.log with the request id.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, HTTPConnection

from ..errors import EmoserveError

error_log = logging.getLogger("emoserve.error")
access_log = logging.getLogger("emoserve.access")

STATUS_BY_CODE: dict[str, int] = {
    "empty_audio": 400,
    "unsupported_format": 400,
    "corrupt_audio": 400,
    "invalid_parameter": 400,
    "too_short": 400,
    "checksum_mismatch": 400,  # tus PATCH answers 460, the status of its checksum extension
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "idle_timeout": 408,  # a WebSocket stream that sent nothing for EMOSERVE_STREAM_IDLE_TIMEOUT_S: close 4408
    "request_timeout": 408,  # an upload body that stopped arriving; the connection is closed
    "upload_incomplete": 409,
    "conflict": 409,
    "upload_expired": 410,
    "unsupported_tus_version": 412,
    "audio_too_long": 413,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "internal_error": 500,
    "clip_too_large": 500,
    "model_loading": 503,
    "model_unavailable": 503,
    "overloaded": 503,
    "insufficient_storage": 507,
}
DEFAULT_RETRY_AFTER_S = {503: 1, 429: 30}  # 429 here: upload quotas, freed as uploads finish or expire
CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
                  401: "unauthorized", 429: "rate_limited"}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 400 if code else 500)


def error_response(code: str, message: str, status: int | None = None, headers: dict | None = None,
                   details: dict | None = None) -> JSONResponse:
    body: dict = {"error": {"code": code, "message": message}}
    if details:
        body["error"].update(details)
    return JSONResponse(body, status_code=status or status_for(code), headers=headers)


def retry_headers(error: EmoserveError) -> dict | None:
    retry_after = getattr(error, "retry_after", None) or error.details.get("retry_after")
    if retry_after is None:
        retry_after = DEFAULT_RETRY_AFTER_S.get(status_for(error.code))
    return {"Retry-After": str(max(1, round(float(retry_after))))} if retry_after is not None else None


def request_id(connection: HTTPConnection) -> str:
    """The id the middleware gave this request or WebSocket ("-" before it ran)."""
    return getattr(connection.state, "request_id", "-")


DECODE_FAILURES = {"corrupt_audio", "unsupported_format"}  # the client's file, but worth a trace to debug


async def handle_emoserve_error(request: Request, error: EmoserveError) -> JSONResponse:
    """The error's JSON body; failures of ours (5xx) and undecodable files also go to error.log.

    503s (loading, overloaded) are backpressure, not failures: access.log counts them.
    """
    status = status_for(error.code)
    if status >= 500 and status != 503 or error.code in DECODE_FAILURES:
        error_log.log(logging.ERROR if status >= 500 else logging.WARNING, "%s %s -> %s %s: %s", request.method,
                      request.url.path, status, error.code, error.message, extra={"request_id": request_id(request)})
    details = {k: v for k, v in error.details.items() if k != "retry_after"}
    headers = retry_headers(error)
    if status == 408:  # the rest of the body will not be read: the connection cannot carry another request
        headers = {**(headers or {}), "Connection": "close"}
    return error_response(error.code, error.message, status, headers, details)


async def handle_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5])
    return error_response("invalid_parameter", f"invalid request: {problems}")


async def handle_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = CODE_BY_STATUS.get(error.status_code, "invalid_parameter" if error.status_code < 500 else "internal_error")
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs"
    return error_response(code, message, error.status_code, getattr(error, "headers", None))


async def handle_disconnect(request: Request, error: ClientDisconnect) -> Response:
    """The client went away mid-body: expected of uploads over bad networks (they resume), so no error log."""
    access_log.info("%s %s: client disconnected before the body ended", request.method, request.url.path,
                    extra={"request_id": request_id(request)})
    return Response(status_code=499)  # nobody reads it


async def handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    error_log.exception("unhandled error on %s %s", request.method, request.url.path,
                        extra={"request_id": request_id(request)})
    return error_response("internal_error", f"internal error; quote request id {request_id(request)} when "
                                            "reporting it", 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EmoserveError, handle_emoserve_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ClientDisconnect, handle_disconnect)
    app.add_exception_handler(Exception, handle_unexpected)
