"""Typed errors → the JSON error body, in one place.

Every error the service answers is `{"error": {"code": ..., "message": ...}}` (`wire.ErrorBody`) with
the status that `emoserve.errors.ERROR_CODES` gives its code. Unknown failures are a 500
`internal_error` whose message never leaks a stack trace; the trace goes to error.log with the
request id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, HTTPConnection

from ..errors import ERROR_CODES, EmoserveError, code_for_status, retry_headers, status_for
from ..wire import ErrorBody, ErrorDetail

error_log = logging.getLogger("emoserve.error")
access_log = logging.getLogger("emoserve.access")


def error_response(code: str, message: str, status: int | None = None, headers: dict | None = None,
                   details: dict | None = None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, **(details or {})))
    return Response(body.to_json(), status_code=status or status_for(code), headers=headers,
                    media_type="application/json")


def error_responses(codes: Iterable[str]) -> dict[int, dict]:
    """OpenAPI `responses` for these codes: one per status, described from the table of codes."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_CODES[code].status, []).append(code)
    return {status: {"model": ErrorBody, "description": "; ".join(f"`{code}`: {ERROR_CODES[code].description}"
                                                                  for code in codes_of_status)}
            for status, codes_of_status in sorted(by_status.items())}


ANALYZE_CODES = ("empty_audio", "unsupported_format", "corrupt_audio", "invalid_parameter", "too_short",
                 "unauthorized", "audio_too_long", "payload_too_large", "rate_limited", "internal_error",
                 "model_loading", "model_unavailable", "overloaded")
UPLOAD_CODES = ("invalid_parameter", "checksum_mismatch", "unauthorized", "not_found", "upload_incomplete",
                "conflict", "upload_expired", "payload_too_large", "rate_limited", "quota_exceeded", "internal_error",
                "model_loading", "model_unavailable")
COMMON_ERRORS = error_responses(("unauthorized", "rate_limited", "internal_error", "model_loading",
                                 "model_unavailable"))
ANALYZE_ERRORS = error_responses(ANALYZE_CODES)
UPLOAD_ERRORS = error_responses(UPLOAD_CODES)
TUS_ERRORS = error_responses((*UPLOAD_CODES, "unsupported_tus_version", "unsupported_media_type"))


def request_id(connection: HTTPConnection) -> str:
    """The id the middleware gave this request or WebSocket ("-" before it ran)."""
    return getattr(connection.state, "request_id", "-")


DECODE_FAILURES = {"corrupt_audio", "unsupported_format"}  # the client's file, but worth a trace to debug


async def handle_emoserve_error(request: Request, error: EmoserveError) -> Response:
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


async def handle_validation_error(request: Request, error: RequestValidationError) -> Response:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5])
    return error_response("invalid_parameter", f"invalid request: {problems}")


async def handle_http_error(request: Request, error: StarletteHTTPException) -> Response:
    code = code_for_status(error.status_code)
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs"
    return error_response(code, message, error.status_code, getattr(error, "headers", None))


async def handle_disconnect(request: Request, error: ClientDisconnect) -> Response:
    """The client went away mid-body: expected of uploads over bad networks (they resume), so no error log."""
    access_log.info("%s %s: client disconnected before the body ended", request.method, request.url.path,
                    extra={"request_id": request_id(request)})
    return Response(status_code=499)  # nobody reads it


async def handle_unexpected(request: Request, error: Exception) -> Response:
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
