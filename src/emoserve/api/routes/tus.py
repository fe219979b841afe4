"""tus 1.0 resumable uploads at /v1/tus/: core, creation, termination, expiration and checksum.

The uploads are the store's, so a tus upload feeds `/v1/upload/complete` and `POST /v1/jobs`, and
has the quotas, expiry and durability of chunked ones. A PATCH body is appended as it arrives, in
pieces of the chunk size, each fsynced before the offset moves; when the client drops, what arrived
is kept and HEAD tells it where to resume. With `Upload-Checksum` the body is spooled first (to a
nameless temp file in the upload's directory) and appended only once it matches. Protocol:
https://tus.io/protocols/resumable-upload
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from email.utils import formatdate

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
    UploadExpiredError,
)
from ...jobs.store import EXPIRED, UPLOADING, Store, Upload, digest_matches
from ..errors import TUS_ERRORS, error_response
from ..numbers import declared_length, parse_ascii_int
from .jobs import service_of

PREFIX = "/v1/tus"
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")
OFFSET_STREAM = "application/offset+octet-stream"
CHECKSUM_MISMATCH_STATUS = 460  # the checksum extension's status
EXPOSED_HEADERS = ("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
                   "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires")

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
    settings = service_of(request).settings
    return Response(status_code=204, headers={
        "Tus-Extension": EXTENSIONS, "Tus-Max-Size": str(settings.upload_max_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})


@router.post("", include_in_schema=False)
@router.post("/", status_code=201, summary="tus creation", responses=TUS_ERRORS)
async def create(request: Request, upload_length: str | None = Header(None),
                 upload_metadata: str | None = Header(None),
                 upload_defer_length: str | None = Header(None)) -> Response:
    """`Upload-Length` bytes to come (deferred lengths are not offered); `Location` is where to PATCH them."""
    check_version(request)
    store = service_of(request).ready_store()
    if upload_defer_length is not None:
        raise InvalidParameterError("Upload-Defer-Length is not supported: send Upload-Length")
    length = parse_ascii_int(upload_length, "Upload-Length")
    upload = await run_in_threadpool(store.create_tus_upload, length, parse_metadata(upload_metadata))
    return Response(status_code=201, headers={
        "Location": str(request.url_for("tus_upload", upload_id=upload.upload_id)), **expiry_headers(upload)})


@router.head("/{upload_id}", name="tus_upload", summary="tus offset: where to resume")
async def head(upload_id: str, request: Request) -> Response:
    _, upload = await tus_upload(request, upload_id)
    headers = {"Upload-Offset": str(upload.offset), "Upload-Length": str(upload.total_size),
               "Cache-Control": "no-store", **expiry_headers(upload)}
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
    room = upload.total_size - offset
    declared = declared_length(request.headers)
    if declared is not None and declared > room:
        raise PayloadTooLargeError(f"{declared} bytes at offset {offset} overrun the upload's length "
                                   f"{upload.total_size}")
    piece_bytes = store.limits.max_chunk_bytes
    if checksum is None:
        offset = await append_as_it_arrives(store, upload_id, offset, request, piece_bytes)
    else:
        try:
            offset = await append_once_verified(store, upload_id, offset, request, checksum, room, piece_bytes)
        except ChecksumMismatchError as e:
            return error_response(e.code, e.message, CHECKSUM_MISMATCH_STATUS)
    upload = await run_in_threadpool(store.get_upload, upload_id)
    return Response(status_code=204, headers={"Upload-Offset": str(offset), **expiry_headers(upload)})


async def append_as_it_arrives(store: Store, upload_id: str, offset: int, request: Request,
                               piece_bytes: int) -> int:
    """Each piece durable before the next is read; on a dropped connection the bytes that came are kept."""
    buffer = bytearray()
    try:
        async for data in request.stream():
            buffer += data
            if len(buffer) >= piece_bytes:
                offset = await run_in_threadpool(store.append, upload_id, offset, bytes(buffer))
                buffer.clear()
    except ClientDisconnect:
        if buffer:
            await run_in_threadpool(store.append, upload_id, offset, bytes(buffer))
        raise
    if buffer:
        offset = await run_in_threadpool(store.append, upload_id, offset, bytes(buffer))
    return offset


async def append_once_verified(store: Store, upload_id: str, offset: int, request: Request,
                               checksum: tuple[str, str], room: int, piece_bytes: int) -> int:
    """The whole body spooled and hashed, then appended piece by piece only if it matches its checksum."""
    algorithm, expected = checksum
    digest, received = hashlib.new(algorithm), 0
    with tempfile.TemporaryFile(dir=store.upload_dir(upload_id)) as spool:
        buffer = bytearray()
        async for data in request.stream():
            received += len(data)
            if received > room:
                raise PayloadTooLargeError(f"the body overruns the upload's length by {received - room} bytes")
            digest.update(data)
            buffer += data
            if len(buffer) >= piece_bytes:
                await run_in_threadpool(spool.write, bytes(buffer))
                buffer.clear()
        await run_in_threadpool(spool.write, bytes(buffer))
        if not digest_matches(expected, algorithm, digest.digest()):
            raise ChecksumMismatchError(f"the {received} bytes do not match their {algorithm} checksum: nothing was "
                                        "stored; send them again")
        spool.seek(0)
        while piece := await run_in_threadpool(spool.read, piece_bytes):
            offset = await run_in_threadpool(store.append, upload_id, offset, piece)
    return offset


@router.delete("/{upload_id}", status_code=204, summary="tus termination", responses=TUS_ERRORS)
async def terminate(upload_id: str, request: Request) -> Response:
    store, _ = await tus_upload(request, upload_id)
    await run_in_threadpool(store.delete_upload, upload_id)
    return Response(status_code=204)
