"""The FastAPI application: the service's lifespan (`runtime.Service.running`), middleware, routes, the UI at /ui."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..config import ServerConfig, Settings
from ..inference.emotion_model import EmotionModel
from ..logs import setup_logging
from ..runtime import Service
from ..throttle import Throttle
from ..ui import mount_ui
from ..wire import ANALYZE_RESULT, STREAM_MESSAGE, ErrorBody
from .bodies import BodySlots
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware, secure_openapi
from .routes import analyze as routes_analyze
from .routes import health as routes_health
from .routes import jobs as routes_jobs
from .routes import stream as routes_stream
from .routes import tus as routes_tus
from .routes import uploads as routes_uploads

REF = "#/components/schemas/{model}"
DESCRIPTION = """Speech emotion recognition with emotion2vec.

Send a clip to `POST /v1/analyze`; send long audio with `/v1/upload/*` (chunked, parallel, resumable) or tus
1.0 at `/v1/tus/`, then follow its job at `/v1/jobs/{id}`. Every error is `{"error": {"code", "message"}}`
(see docs/API.md)."""


def create_app(settings: Settings | None = None, model: EmotionModel | None = None, *,
               service: Service | None = None) -> FastAPI:
    """The service. `model` skips loading (tests, embedding in another app); else `settings.model` loads.

    `service`: the one to run, composed by the caller (on Ray: with a remote engine); its settings then win."""
    service = service or Service(settings or Settings())
    settings = service.settings
    server = settings.server
    setup_logging(server)
    throttle = Throttle.from_config(server)  # one budget per client, whether it calls the API or the UI
    app = FastAPI(title="emoserve", version=__version__, description=DESCRIPTION,
                  lifespan=lambda app: service.running(model))
    app.state.service = service
    app.state.upload_bodies = BodySlots(settings.store.upload_max_concurrent_bodies)  # bodies received at once
    install_error_handlers(app)
    app.include_router(routes_health.router)
    app.include_router(routes_analyze.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_uploads.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_tus.router)
    if not server.api_only:
        mount_ui(app, service, throttle)  # /ui, on this service's engine; a warning without Gradio
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics, api_keys=server.keys(),
                       metrics_key=server.metrics_key.get_secret_value(), throttle=throttle)
    app.add_middleware(routes_tus.TusProtocolMiddleware)  # outside auth: its refusals carry Tus-Resumable too
    if server.origins():
        app.add_middleware(CORSMiddleware, allow_origins=server.origins(), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "X-Embedding-Size", "Retry-After",
                                                                "Location", *routes_tus.EXPOSED_HEADERS])
    app.openapi = lambda: openapi_schema(app, server)
    return app


def openapi_schema(app: FastAPI, server: ServerConfig) -> dict:
    """FastAPI's schema plus the bodies that routes send by hand: analysis results, errors and the messages of
    the WebSocket /v1/stream (`StreamMessage`, which OpenAPI's paths cannot describe), and the API keys' schemes."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        extras = {"AnalyzeResult": ANALYZE_RESULT.json_schema(ref_template=REF),
                  "ErrorBody": ErrorBody.model_json_schema(ref_template=REF),
                  "StreamMessage": STREAM_MESSAGE.json_schema(ref_template=REF)}
        for name, extra in extras.items():
            components.update(extra.pop("$defs", {}))
            components[name] = extra
        metrics_key = server.metrics_key.get_secret_value()
        secure_openapi(schema, server.keys(), [metrics_key] if metrics_key else [])
        app.openapi_schema = schema
    return app.openapi_schema
