"""GET /health, /livez, /readyz, /v1/models, /metrics.

/health describes the service for people and clients; /livez and /readyz are the two questions an
orchestrator asks: is the process alive (else restart it), is it taking work (else send it none).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ...inference.results import GRANULARITIES
from ...wire import Health, Liveness, ModelDescription, ModelsList, Readiness
from ..deps import service_of
from ..errors import COMMON_ERRORS

router = APIRouter()


@router.get("/health", response_model=Health, summary="Is the model loaded?",
            responses={503: {"model": Health, "description": "loading (retry after Retry-After) or failed"}})
async def health(request: Request) -> JSONResponse:
    """200 `healthy`, or 200 `degraded` with a `reason` when the disk is (nearly) full (the model still answers,
    uploads are refused) or, on Ray, while model replicas are missing. 503 while loading or after a failed load."""
    service = service_of(request)
    status, reason = service.status, None
    if status == "healthy":
        reason = await run_in_threadpool(service.degraded_reason)
        status = "degraded" if reason else status
    body = Health(status=status, model=service.model.name if service.model else service.settings.model.model,
                  granularity_supported=list(GRANULARITIES),
                  weights=service.model.weights if service.model else None, error=service.error, reason=reason)
    if service.status == "healthy":
        return JSONResponse(body.to_dict())
    headers = {"Retry-After": "2"} if service.status == "loading" else None
    return JSONResponse(body.to_dict(), status_code=503, headers=headers)


@router.get("/livez", response_model=Liveness, summary="Is the process alive? (liveness probe)")
async def livez() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, summary="Is the model loaded and warm, the engine taking work? "
            "(readiness probe)", responses={503: {"model": Readiness, "description": "loading or stopping (retry "
                                                                                    "after Retry-After) or failed"}})
async def readyz(request: Request) -> JSONResponse:
    service = service_of(request)
    if service.ready:
        return JSONResponse(Readiness(status="ready", model=service.model.name).model_dump(exclude_none=True))
    status = "stopping" if service.status == "healthy" else service.status
    body = Readiness(status=status, model=service.settings.model.model, error=service.error)
    headers = None if status == "failed" else {"Retry-After": "2"}  # a failed load does not heal by waiting
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers=headers)


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
