"""tus 1.0 resumable uploads at /v1/tus/: core, creation, termination, expiration, checksum and concatenation.

The uploads are the store's, so a tus upload feeds `/v1/upload/complete` and `POST /v1/jobs`, and
has the quotas, expiry and durability of chunked ones. A PATCH body goes to disk piece by piece as
it arrives (api/bodies.py: an idle timeout, a bound on bodies at once), its offset committed every
chunk size of fsynced bytes; when the client drops or stalls, what arrived is kept and HEAD tells
it where to resume. With `Upload-Checksum` the offset moves only once the whole body matches.
Concatenation (parallel uploads of tus-js-client and Uppy): `Upload-Concat: partial` uploads, then
one `Upload-Concat: final;URL URL ...` that the store joins at once into a complete upload.
Protocol: https://tus.io/protocols/resumable-upload
"""

from __future__ import annotations

import base64
from email.utils import formatdate
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import (
    ChecksumMismatchError,
    ConflictError,
    EmoserveError,
    InvalidParameterError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UploadExpiredError,
)
from ...jobs.records import EXPIRED, UPLOADING, Upload
from ...jobs.store import CHECKSUM_ALGORITHMS, Store, TusAppender
from ..bodies import body_pieces
from ..deps import service_of
from ..errors import TUS_ERRORS, error_response
from ..numbers import declared_length, parse_ascii_int

PREFIX = "/v1/tus"
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration,checksum,concatenation"
OFFSET_STREAM = "application/offset+octet-stream"
CHECKSUM_MISMATCH_STATUS = 460  # the checksum extension's status
FINAL_PATCH_STATUS = 403  # the concatenation extension's answer to a PATCH of a final upload
EXPOSED_HEADERS = ("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
                   "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires", "Upload-Concat")

router = APIRouter(prefix=PREFIX, tags=["tus"])


class TusProtocolMiddleware:
    """What every tus exchange shares, errors and auth refusals included: `Tus-Resumable` and `Tus-Version`
    on each response, and `X-HTTP-Method-Override` for clients that cannot send PATCH or DELETE."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] + "/").startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        override = Headers(scope=scope).get("x-http-method-override", "").upper()
        if scope["method"] == "POST" and override in ("PATCH", "DELETE"):
            scope = {**scope, "method": override}

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Tus-Resumable"] = TUS_VERSION
                headers["Tus-Version"] = TUS_VERSION
            await send(message)

        await self.app(scope, receive, send_with_version)


def check_version(request: Request) -> None:
    """412 unless the client speaks our version (every request but OPTIONS must say which it speaks)."""
    given = request.headers.get("tus-resumable")
    if given != TUS_VERSION:
        raise EmoserveError(f"Tus-Resumable must be {TUS_VERSION}; got {given!r}", code="unsupported_tus_version")


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def parse_metadata(header: str | None) -> dict[str, str]:
    """`Upload-Metadata: key base64,key2 base64,flag`: values must be UTF-8 text."""
    metadata: dict[str, str] = {}
    for pair in (p.strip() for p in (header or "").split(",")):
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key or key in metadata or " " in value.strip():
            raise InvalidParameterError(f"Upload-Metadata: bad or repeated pair {pair[:60]!r}")
        try:
            metadata[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError as e:  # not base64 (binascii.Error), non-ASCII text, or not UTF-8
            raise InvalidParameterError(f"Upload-Metadata: the value of {key[:40]!r} is not base64 of UTF-8 "
                                        "text") from e
    return metadata


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items())


def parse_checksum(header: str | None) -> tuple[str, str] | None:
    """`Upload-Checksum: sha1 <base64>` → (algorithm, digest); 400 for an algorithm we do not offer."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS or not value.strip():
        raise InvalidParameterError(f"Upload-Checksum must be '<algorithm> <base64>' with an algorithm of "
                                    f"{', '.join(CHECKSUM_ALGORITHMS)}; got {header[:60]!r}")
    return algorithm.lower(), value.strip()


def parse_concat(header: str | None) -> tuple[str | None, list[str]]:
    """`Upload-Concat: partial` → ("partial", []); `final;URL URL ...` → ("final", the ids in order)."""
    if header is None:
        return None, []
    kind, _, urls = header.strip().partition(";")
    if kind == "partial" and not urls:
        return "partial", []
    if kind == "final" and urls.split():
        return "final", [partial_id(url) for url in urls.split()]
    raise InvalidParameterError(f"Upload-Concat must be 'partial' or 'final;<url> <url> ...'; got {header[:100]!r}")


def partial_id(url: str) -> str:
    """The upload id of a partial upload's URL (absolute or a path): only this server's tus uploads are joined."""
    head, _, upload_id = urlsplit(url).path.rpartition("/")
    if not head.endswith(PREFIX):
        raise InvalidParameterError(f"Upload-Concat: {url[:100]!r} is not the URL of a tus upload of this server")
    return upload_id


def concat_header(request: Request, upload: Upload) -> dict[str, str]:
    if upload.is_partial:
        return {"Upload-Concat": "partial"}
    if upload.partial_ids:
        urls = (str(request.url_for("tus_upload", upload_id=upload_id)) for upload_id in upload.partial_ids)
        return {"Upload-Concat": "final;" + " ".join(urls)}
    return {}


async def tus_upload(request: Request, upload_id: str) -> tuple[Store, Upload]:
    check_version(request)
    store = service_of(request).ready_store()
    upload = await run_in_threadpool(store.get_upload, upload_id)
    if upload.kind != "tus":
        raise NotFoundError(f"upload {upload_id} is a chunked upload: use /v1/upload/{upload_id}")
    if upload.state == EXPIRED:
        raise UploadExpiredError(f"upload {upload_id} expired and its data was removed: start a new upload")
    return store, upload


def expiry_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Expires": http_date(upload.expires_at)} if upload.state == UPLOADING else {}


@router.options("", include_in_schema=False)
@router.options("/", summary="tus discovery: version, extensions, size limit")
@router.options("/{upload_id}", include_in_schema=False)
async def options(request: Request) -> Response:
    limit = service_of(request).settings.store.upload_max_bytes
    return Response(status_code=204, headers={
        "Tus-Extension": EXTENSIONS, "Tus-Max-Size": str(limit),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})


@router.post("", include_in_schema=False)
@router.post("/", status_code=201, summary="tus creation", responses=TUS_ERRORS)
async def create(request: Request, upload_length: str | None = Header(None),
                 upload_metadata: str | None = Header(None),
                 upload_defer_length: str | None = Header(None),
                 upload_concat: str | None = Header(None)) -> Response:
    """`Upload-Length` bytes to come (deferred lengths are not offered); `Location` is where to PATCH them.

    `Upload-Concat: partial` makes a part of a file; `Upload-Concat: final;URL URL ...` (without
    `Upload-Length`) joins complete partial uploads, in that order, into a complete upload at once."""
    check_version(request)
    store = service_of(request).ready_store()
    if upload_defer_length is not None:
        raise InvalidParameterError("Upload-Defer-Length is not supported: send Upload-Length")
    concat, partial_ids = parse_concat(upload_concat)
    metadata = parse_metadata(upload_metadata)
    if concat == "final":
        if upload_length is not None:
            raise InvalidParameterError("a final upload (Upload-Concat: final;...) takes no Upload-Length: its "
                                        "length is the sum of its partial uploads")
        upload = await run_in_threadpool(store.create_tus_final, partial_ids, metadata)
    else:
        length = parse_ascii_int(upload_length, "Upload-Length")
        upload = await run_in_threadpool(store.create_tus_upload, length, metadata, partial=concat == "partial")
    return Response(status_code=201, headers={
        "Location": str(request.url_for("tus_upload", upload_id=upload.upload_id)), **expiry_headers(upload)})


@router.head("/{upload_id}", name="tus_upload", summary="tus offset: where to resume")
async def head(upload_id: str, request: Request) -> Response:
    _, upload = await tus_upload(request, upload_id)
    headers = {"Upload-Offset": str(upload.offset), "Upload-Length": str(upload.total_size),
               "Cache-Control": "no-store", **expiry_headers(upload), **concat_header(request, upload)}
    if upload.metadata:
        headers["Upload-Metadata"] = encode_metadata(upload.metadata)
    return Response(status_code=200, headers=headers)


@router.patch("/{upload_id}", status_code=204, summary="tus append at Upload-Offset",
              openapi_extra={"requestBody": {"required": True, "content": {OFFSET_STREAM: {
                  "schema": {"type": "string", "format": "binary"}}}}},
              responses=TUS_ERRORS)
async def patch(upload_id: str, request: Request, upload_offset: str | None = Header(None),
                upload_checksum: str | None = Header(None)) -> Response:
    """Appends the body at `Upload-Offset` (409 unless it is the upload's offset); answers the new offset."""
    store, upload = await tus_upload(request, upload_id)
    if upload.partial_ids:
        return error_response("conflict", f"upload {upload_id} is a final upload, made of its partial uploads: it "
                                          "takes no PATCH", FINAL_PATCH_STATUS)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != OFFSET_STREAM:
        raise EmoserveError(f"a PATCH body must be sent as Content-Type: {OFFSET_STREAM}",
                            code="unsupported_media_type")
    offset = parse_ascii_int(upload_offset, "Upload-Offset")
    checksum = parse_checksum(upload_checksum)
    if upload.state != UPLOADING:
        raise ConflictError(f"upload {upload_id} is already complete", details={"offset": upload.offset})
    if offset != upload.offset:
        raise ConflictError(f"Upload-Offset is {upload.offset}, not {offset}: HEAD the upload and resume there",
                            details={"offset": upload.offset})
    declared = declared_length(request.headers)
    if declared is not None and declared > upload.total_size - offset:
        raise PayloadTooLargeError(f"{declared} bytes at offset {offset} overrun the upload's length "
                                   f"{upload.total_size}")
    service = service_of(request)
    with request.app.state.upload_bodies.claim():
        appender = await run_in_threadpool(store.tus_appender, upload_id, offset, checksum=checksum)
        try:
            offset = await append_body(appender, request, service.settings.store.upload_body_timeout_s)
        except ChecksumMismatchError as e:
            return error_response(e.code, e.message, CHECKSUM_MISMATCH_STATUS)
        finally:
            await run_in_threadpool(appender.close)
    upload = await run_in_threadpool(store.get_upload, upload_id)
    return Response(status_code=204, headers={"Upload-Offset": str(offset), **expiry_headers(upload)})


async def append_body(appender: TusAppender, request: Request, idle_timeout_s: float) -> int:
    """Each piece written as it arrives; a body cut short (a drop, a timeout) keeps what arrived, unless it has a
    checksum that can no longer be checked."""
    try:
        async for piece in body_pieces(request, idle_timeout_s):
            await run_in_threadpool(appender.write, piece)
    except (ClientDisconnect, RequestTimeoutError):
        await run_in_threadpool(appender.keep_what_arrived)
        raise
    return await run_in_threadpool(appender.finish)


@router.delete("/{upload_id}", status_code=204, summary="tus termination", responses=TUS_ERRORS)
async def terminate(upload_id: str, request: Request) -> Response:
    store, _ = await tus_upload(request, upload_id)
    await run_in_threadpool(store.delete_upload, upload_id)
    return Response(status_code=204)
