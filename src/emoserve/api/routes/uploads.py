"""Chunked uploads: POST /v1/upload/init, PUT /v1/upload/{id}/chunk/{n}, GET /v1/upload/{id}, POST /v1/upload/complete.

Chunks arrive in any order and in parallel; each is stored durably (fsync) before it is
acknowledged, so `GET /v1/upload/{id}` is a safe resume point after a crash on either side. A
chunk's body goes to disk piece by piece as it arrives (api/bodies.py), with the upload's chunk
size as the cap, an idle timeout and a bound on bodies at once: it is never held in memory. Store
calls block (SQLite, fsync): they run in the threadpool.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...errors import PayloadTooLargeError
from ...wire import ChunkReceived, JobAccepted, JobRequest, UploadCreated, UploadInit, UploadStatus
from ..bodies import body_pieces
from ..deps import service_of
from ..errors import UPLOAD_ERRORS
from ..numbers import ascii_int, declared_length
from .jobs import submit

router = APIRouter(tags=["uploads"])

ChunkIndex = ascii_int("the chunk index")
RAW_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}


def refuse_declared_over(request: Request, cap: int) -> None:
    """413 before reading a body whose Content-Length is over `cap` (one without it is cut off at the cap)."""
    declared = declared_length(request.headers)
    if declared is not None and declared > cap:
        raise PayloadTooLargeError(f"a chunk of this upload carries at most {cap} bytes; got {declared}",
                                   details={"max_bytes": cap})


@router.post("/v1/upload/init", status_code=201, response_model=UploadCreated, summary="Start a chunked upload",
             responses=UPLOAD_ERRORS)
async def init_upload(body: UploadInit, request: Request) -> JSONResponse:
    """Announce a file; PUT its chunks to `chunk_urls` (any order, in parallel), then POST /v1/upload/complete."""
    store = service_of(request).ready_store()
    upload = await run_in_threadpool(store.create_upload, body.filename, body.total_size, body.chunk_size,
                                      body.sha256)
    first = str(request.url_for("put_chunk", upload_id=upload.upload_id, index="0"))
    chunk_urls = [first[:-1] + str(index) for index in range(upload.chunk_count)]
    body = UploadCreated(**upload.to_dict(), chunk_urls=chunk_urls)
    location = str(request.url_for("get_upload", upload_id=upload.upload_id))
    return JSONResponse(body.to_dict(), status_code=201, headers={"Location": location})


@router.put("/v1/upload/{upload_id}/chunk/{index}", name="put_chunk", response_model=ChunkReceived,
            summary="Send one chunk", openapi_extra=RAW_BODY, responses=UPLOAD_ERRORS)
async def put_chunk(upload_id: str, index: ChunkIndex, request: Request,
                    content_md5: str | None = Header(None, description="MD5 of the chunk, base64 or hex"),
                    x_chunk_sha256: str | None = Header(None, description="SHA-256 of the chunk, hex or base64")
                    ) -> ChunkReceived:
    """Stored durably before the answer; re-sending a chunk replaces it (idempotent)."""
    service = service_of(request)
    store = service.ready_store()
    upload = await run_in_threadpool(store.writable_upload, upload_id, "chunked")  # 404/409/410 before the body
    refuse_declared_over(request, upload.chunk_size)
    with request.app.state.upload_bodies.claim():
        receiver = await run_in_threadpool(store.receive_chunk, upload_id, index, md5=content_md5,
                                           sha256=x_chunk_sha256)
        try:
            async for piece in body_pieces(request, service.settings.store.upload_body_timeout_s):
                await run_in_threadpool(receiver.write, piece)
            stored = await run_in_threadpool(receiver.commit)
        finally:
            await run_in_threadpool(receiver.close)
    return ChunkReceived(**stored)


@router.get("/v1/upload/{upload_id}", name="get_upload", response_model=UploadStatus,
            summary="What arrived, what is missing", responses=UPLOAD_ERRORS)
async def get_upload(upload_id: str, request: Request) -> JSONResponse:
    """The resume point after a dropped connection or a crash: send the `missing` chunks again."""
    store = service_of(request).ready_store()
    upload = await run_in_threadpool(store.get_upload, upload_id)
    return JSONResponse(UploadStatus(**upload.to_dict()).to_dict())


@router.delete("/v1/upload/{upload_id}", status_code=204, summary="Abandon an upload",
               responses=UPLOAD_ERRORS)
async def delete_upload(upload_id: str, request: Request) -> Response:
    """Remove an upload and its data now, freeing its quota (refused while a job on it is queued or running)."""
    store = service_of(request).ready_store()
    await run_in_threadpool(store.delete_upload, upload_id)
    return Response(status_code=204)


@router.post("/v1/upload/complete", status_code=202, response_model=JobAccepted,
             summary="Join the chunks and start the analysis", responses=UPLOAD_ERRORS)
async def complete_upload(body: JobRequest, request: Request) -> JSONResponse:
    """409 `upload_incomplete` with the `missing` chunks if some are missing; 400 `checksum_mismatch` if the
    joined file does not match the sha256 given at init. Repeating it answers the same job."""
    service = service_of(request)
    service.ready_runner()  # no job without a model: refuse before joining
    await run_in_threadpool(service.ready_store().complete_upload, body.upload_id)
    return await submit(request, body)
