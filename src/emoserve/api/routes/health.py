"""GET /health, /livez, /readyz, /v1/models, /metrics.

/health describes the service for people and clients; /livez and /readyz are the two questions an
orchestrator asks: is the process alive (else restart it), is it taking work (else send it none).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...inference.results import GRANULARITIES
from ...runtime import Service
from ..schemas import ERROR_RESPONSES, Health, Liveness, ModelsList, Readiness

router = APIRouter()


@router.get("/health", response_model=Health, summary="Is the model loaded?",
            responses={503: {"model": Health, "description": "loading (retry after Retry-After) or failed"}})
async def health(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    body = Health(status=service.status, model=service.model.name if service.model else service.settings.model,
                  granularity_supported=list(GRANULARITIES),
                  weights=service.model.weights if service.model else None, error=service.error)
    if service.status == "healthy":
        return JSONResponse(body.model_dump(exclude_none=True))
    headers = {"Retry-After": "2"} if service.status == "loading" else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers=headers)


@router.get("/livez", response_model=Liveness, summary="Is the process alive? (liveness probe)")
async def livez() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, summary="Is the model loaded and warm, the engine taking work? "
            "(readiness probe)", responses={503: {"model": Readiness, "description": "loading or stopping (retry "
                                                                                    "after Retry-After) or failed"}})
async def readyz(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    if service.ready:
        return JSONResponse(Readiness(status="ready", model=service.model.name).model_dump(exclude_none=True))
    status = "stopping" if service.status == "healthy" else service.status
    body = Readiness(status=status, model=service.settings.model, error=service.error)
    headers = None if status == "failed" else {"Retry-After": "2"}  # a failed load does not heal by waiting
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers=headers)


@router.get("/v1/models", response_model=ModelsList, summary="The loaded model", responses=ERROR_RESPONSES)
async def models(request: Request) -> ModelsList:
    service: Service = request.app.state.service
    service.ready_engine()
    return ModelsList(models=[service.model.info.to_dict()])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    engine = service.engine
    payload = service.metrics.render(engine.queue_depth if engine else 0,
                                     engine.device_memory_bytes() if engine else None)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
