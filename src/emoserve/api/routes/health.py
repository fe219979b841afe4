"""GET /health, /v1/models, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...inference.results import GRANULARITIES
from ..deps import service_of
from ..schemas import ERROR_RESPONSES, Health, ModelsList

router = APIRouter()


@router.get("/health", response_model=Health, summary="Is the model loaded?",
            responses={503: {"model": Health, "description": "loading (retry after Retry-After) or failed"}})
async def health(request: Request) -> JSONResponse:
    service = service_of(request)
    body = Health(status=service.status, model=service.model.name if service.model else service.settings.model,
                  granularity_supported=list(GRANULARITIES),
                  weights=service.model.weights if service.model else None, error=service.error)
    if service.status == "healthy":
        return JSONResponse(body.model_dump(exclude_none=True))
    headers = {"Retry-After": "2"} if service.status == "loading" else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503, headers=headers)


@router.get("/v1/models", response_model=ModelsList, summary="The loaded model", responses=ERROR_RESPONSES)
async def models(request: Request) -> ModelsList:
    service = service_of(request)
    service.ready_engine()
    return ModelsList(models=[service.model.info.to_dict()])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    service = service_of(request)
    engine = service.engine
    payload = service.metrics.render(engine.queue_depth if engine else 0,
                                     engine.device_memory_bytes() if engine else None)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
