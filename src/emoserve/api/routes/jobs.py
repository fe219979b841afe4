"""Long-audio jobs: POST /v1/jobs, GET /v1/jobs/{id}[?wait=S], GET /v1/jobs/{id}/embedding.npy[?channel=K],
DELETE /v1/jobs/{id}.

Store and runner calls block (SQLite, fsync), so they run in the threadpool. `?wait` polls the
store from the event loop instead of parking a threadpool thread per waiting client. A job's
result (tens of MB of JSON for a long frame job) is streamed from the file written when the job
succeeded, between the small status fields: never parsed or re-serialised per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from itertools import chain
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...audio import MAX_CHANNELS
from ...errors import NotFoundError
from ...jobs.records import Job
from ...wire import JobAccepted, JobRequest, JobStatus
from ..deps import service_of
from ..errors import UPLOAD_ERRORS
from ..numbers import ascii_decimal, ascii_int

router = APIRouter(tags=["jobs"])

POLL_FIRST_S, POLL_MAX_S = 0.05, 0.5
READ_BLOCK = 1024 * 1024
WaitSeconds = ascii_decimal("wait")
ChannelIndex = ascii_int("channel", 0, MAX_CHANNELS - 1)


def job_accepted(request: Request, job: Job) -> JSONResponse:
    """202 + where to follow the job; a repeated request answers the same job (whatever its status now)."""
    status_url = str(request.url_for("get_job", job_id=job.job_id))
    body = JobAccepted(job_id=job.job_id, status=job.status, status_url=status_url)
    return JSONResponse(body.to_dict(), status_code=202, headers={"Location": status_url})


async def submit(request: Request, body: JobRequest) -> JSONResponse:
    runner = service_of(request).ready_runner()
    job = await run_in_threadpool(runner.submit, body.upload_id, body.granularity, body.return_embedding,
                                  body.callback_url, body.channels, body.channel_names)
    return job_accepted(request, job)


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted, summary="Analyse a complete upload",
             responses=UPLOAD_ERRORS)
async def create_job(body: JobRequest, request: Request) -> JSONResponse:
    """A job over an upload already complete (chunked after /v1/upload/complete, or tus once every byte came)."""
    return await submit(request, body)


@router.get("/v1/jobs/{job_id}", name="get_job", response_model=JobStatus, summary="A job's status and result",
            responses={304: {"description": "If-None-Match names the job's current ETag: nothing changed"},
                       **UPLOAD_ERRORS})
async def get_job(job_id: str, request: Request,
                  wait: Annotated[WaitSeconds, Query(description="block up to this many seconds until the job "
                                                                 "is done (cut to the server's limit, 60 s by "
                                                                 "default)")] = 0.0) -> Response:
    """Answers 304 to `If-None-Match` with the job's current (strong) `ETag`."""
    service = service_of(request)
    store = service.ready_store()
    deadline = asyncio.get_running_loop().time() + min(wait, service.settings.jobs.job_max_wait_s)
    delay = POLL_FIRST_S
    while True:
        job = await run_in_threadpool(store.get_job, job_id)
        remaining = deadline - asyncio.get_running_loop().time()
        if job.finished or remaining <= 0:
            return await job_response(job, request)
        await asyncio.sleep(min(delay, remaining))
        delay = min(2 * delay, POLL_MAX_S)


async def job_response(job: Job, request: Request) -> Response:
    """The job JSON: status fields around the stored result bytes, with an ETag computed from the result's
    hash (taken when it was written) and the status fields, so a conditional GET reads no file."""
    head, tail = job.json_parts()
    if job.result_path is None:
        body = head + b"null" + tail
        etag = strong_etag(body)
    else:
        etag = strong_etag(head + job.result_sha256.encode() + tail)
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    if job.result_path is None:
        return Response(body, media_type="application/json", headers={"ETag": etag})
    try:
        file = await run_in_threadpool(open, job.result_path, "rb")  # a DELETE meanwhile cannot pull it away
    except FileNotFoundError as e:
        raise NotFoundError(f"job {job.job_id} was deleted") from e
    size = len(head) + os.fstat(file.fileno()).st_size + len(tail)
    return StreamingResponse(chain([head], blocks(file), [tail]), media_type="application/json",
                             headers={"Content-Length": str(size), "ETag": etag})


def strong_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """`If-None-Match` (RFC 9110: `*`, or a list of tags compared weakly) names the current representation."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get("/v1/jobs/{job_id}/embedding.npy", summary="The embedding of a finished job",
            response_class=Response,
            responses={200: {"content": {"application/x-npy": {}},
                             "description": "float32 .npy: (segments, D) for utterance, (frames, D) for frame"},
                       **UPLOAD_ERRORS})
async def get_embedding(job_id: str, request: Request,
                        channel: Annotated[ChannelIndex | None, Query(
                            description="channels=split jobs: the channel whose embedding to send (required "
                                        "there, refused for mixed jobs); 404 past the file's channels")] = None,
                        ) -> StreamingResponse:
    runner = service_of(request).ready_runner()
    path = await run_in_threadpool(runner.embedding_file, job_id, channel)
    try:
        file = await run_in_threadpool(open, path, "rb")  # open now: a DELETE meanwhile cannot pull it away
    except FileNotFoundError as e:
        raise NotFoundError(f"job {job_id} was deleted") from e
    size = os.fstat(file.fileno()).st_size
    return StreamingResponse(blocks(file), media_type="application/x-npy", headers={
        "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{path.name}"'})


def blocks(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while block := file.read(READ_BLOCK):
            yield block


@router.delete("/v1/jobs/{job_id}", status_code=204, summary="Delete a job, its result and its embedding",
               responses=UPLOAD_ERRORS)
async def delete_job(job_id: str, request: Request) -> Response:
    """A running job stops at its next step; the upload stays (start another job on it, or let it expire)."""
    runner = service_of(request).ready_runner()
    await run_in_threadpool(runner.delete, job_id)
    return Response(status_code=204)
