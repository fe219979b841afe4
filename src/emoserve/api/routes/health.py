"""GET /health, /v1/models, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...inference.results import GRANULARITIES
from ...runtime import Service
from ...wire import Health, ModelDescription, ModelsList
from ..errors import COMMON_ERRORS

router = APIRouter()


@router.get("/health", response_model=Health, summary="Is the model loaded?",
            responses={503: {"model": Health, "description": "loading (retry after Retry-After) or failed"}})
async def health(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    body = Health(status=service.status, model=service.model.name if service.model else service.settings.model,
                  granularity_supported=list(GRANULARITIES),
                  weights=service.model.weights if service.model else None, error=service.error)
    if service.status == "healthy":
        return JSONResponse(body.to_dict())
    headers = {"Retry-After": "2"} if service.status == "loading" else None
    return JSONResponse(body.to_dict(), status_code=503, headers=headers)


@router.get("/v1/models", response_model=ModelsList, summary="The loaded model", responses=COMMON_ERRORS)
async def models(request: Request) -> ModelsList:
    service: Service = request.app.state.service
    service.ready_engine()
    return ModelsList(models=[ModelDescription.model_validate(service.model.info, from_attributes=True)])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    engine = service.engine
    payload = service.metrics.render(engine.queue_depth if engine else 0,
                                     engine.device_memory_bytes() if engine else None)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
