"""GET /health, /v1/models, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ...inference.results import GRANULARITIES
from ...wire import Health, ModelDescription, ModelsList
from ..deps import service_of
from ..errors import COMMON_ERRORS

router = APIRouter()


@router.get("/health", response_model=Health, summary="Is the model loaded?",
            responses={503: {"model": Health, "description": "loading (retry after Retry-After) or failed"}})
async def health(request: Request) -> JSONResponse:
    """200 `healthy`, or 200 `degraded` with a `reason` when the disk is (nearly) full: the model still answers,
    uploads are refused. 503 while loading or after a failed load."""
    service = service_of(request)
    status, reason = service.status, None
    if status == "healthy" and service.store is not None:
        reason = await run_in_threadpool(service.store.storage_problem)
        status = "degraded" if reason else status
    body = Health(status=status, model=service.model.name if service.model else service.settings.model.model,
                  granularity_supported=list(GRANULARITIES),
                  weights=service.model.weights if service.model else None, error=service.error, reason=reason)
    if service.status == "healthy":
        return JSONResponse(body.to_dict())
    headers = {"Retry-After": "2"} if service.status == "loading" else None
    return JSONResponse(body.to_dict(), status_code=503, headers=headers)


@router.get("/v1/models", response_model=ModelsList, summary="The loaded model", responses=COMMON_ERRORS)
async def models(request: Request) -> ModelsList:
    service = service_of(request)
    service.ready_engine()
    return ModelsList(models=[ModelDescription.model_validate(service.model.info, from_attributes=True)])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    service = service_of(request)
    engine = service.engine
    payload = service.metrics.render(engine.queue_depth if engine else 0,
                                     engine.device_memory_bytes() if engine else None)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
