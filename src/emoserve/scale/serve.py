"""`emoserve serve --ray`: the same HTTP API on Ray Serve, its model replicas spread over a cluster.

    HTTP ─► Ingress (N replicas: the emoserve app; parsing, decoding, auth, streams; CPU)
              ├─► EmotionEngine (min..max replicas, autoscaled on queue length: one model and
              │     emoserve's batching engine each, `num_cpus`/`num_gpus` from the settings)
              └─► Store (one replica, on the head node: the SQLite store, the data directory and the
                    job runner; uploads, tus and jobs are forwarded to it; its jobs' clips go to
                    EmotionEngine too, so one long file uses every model replica)

Every replica runs the single-process `Service`, composed differently: the ingress's and the
store's have a `RemoteEngine` (scale/engine.py) instead of a model, the ingress's no store. So the
routes, errors, limits and results are the single-process server's. `app_builder` is the import
path of a Serve config file (deploy/ray/serve.yaml); `run` is what `emoserve serve --ray` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..api.app import create_app
from ..config import Settings
from ..inference.emotion_model import EmotionModel
from ..inference.engine import Engine
from ..runtime import Service
from .engine import Answer, Refusal, RemoteEngine
from .forward import ForwardedRequest, ForwardedResponse, ForwardToOwner, call_app

log = logging.getLogger(__name__)

APP_NAME = "emoserve"
ENGINE, STORE, INGRESS = "EmotionEngine", "Store", "Ingress"
FORWARDED = ("/v1/upload", "/v1/tus", "/v1/jobs")  # the store's routes
FORWARD_HEADROOM_BYTES = 64 * 1024  # a forwarded body may exceed one chunk by this much (JSON bodies, framing)
HEAD_NODE = "node:__internal_head__"  # a resource only the head node has: the store owner lives there
HEALTH_CHECK_PERIOD_S = 2.0  # how soon Serve notices a dead replica and starts another (its default: 10 s)
STORE_CHECK_TIMEOUT_S = 2.0  # /health waits no longer for the store (a call waits while Serve replaces the replica)
STORE_MAX_ONGOING = 256  # the owner's app bounds its work itself (upload bodies at once, jobs one by one)


class EmotionEngine:
    """One model replica: the model of the settings, behind emoserve's own batching engine."""

    async def __init__(self, settings: Settings):
        from ray import get_runtime_context, serve

        config = settings.engine
        if config.threads is None:  # as many compute threads as the CPUs Ray reserved for this replica
            config = config.model_copy(update={"threads": max(1, round(settings.ray.replica_cpus))})
        model = await asyncio.to_thread(EmotionModel.from_config, settings.model, config.threads)
        self.engine = Engine.from_config(config, model)
        await self.engine.start()
        self.node = get_runtime_context().get_node_id()
        self.replica = serve.get_replica_context().replica_id.unique_id

    def describe(self) -> tuple:
        """The model's description and its network's config: what `RemoteModel` holds."""
        return self.engine.model.info, self.engine.model.config

    async def submit(self, waveform, *, granularity: str, return_embedding: bool, origin: str) -> Answer:
        return await self.answer(self.engine.submit(waveform, granularity=granularity,
                                                    return_embedding=return_embedding, origin=origin))

    async def predict(self, clip, *, frames: bool, origin: str) -> Answer:
        """A job's clip: it waits for room in a full queue (`submit_blocking`), as in a single process."""
        work = asyncio.to_thread(self.engine.submit_blocking, [clip], frames, origin=origin)
        return await self.answer(work, first=True)

    async def answer(self, work, first: bool = False) -> Answer:
        from ..errors import EmoserveError

        try:
            value = await work
        except EmoserveError as e:
            return Answer(None, Refusal.of(e), self.replica, self.node)
        return Answer(value[0] if first else value, None, self.replica, self.node)

    async def __del__(self) -> None:  # Serve calls it when it stops the replica
        await self.engine.stop(drain=True)


class StoreOwner:
    """The one owner of the upload store and data directory, and the job runner; its engine is remote."""

    async def __init__(self, settings: Settings, engine: Any):
        server = settings.server.model_copy(update={"api_only": True})  # the UI is the ingress's
        settings = settings.model_copy(update={"server": server})
        self.service = Service(settings, connect_engine=functools.partial(RemoteEngine.connect, engine,
                                                                          settings.engine))
        self.app = create_app(service=self.service)
        self.running = contextlib.AsyncExitStack()
        await self.running.enter_async_context(self.service.running())

    async def handle(self, request: ForwardedRequest) -> ForwardedResponse:
        return await call_app(self.app, request)

    def storage_problem(self) -> str | None:
        return self.service.store.storage_problem() if self.service.store is not None else None

    def computed_by(self) -> dict[str, int]:
        """Node id → clips of jobs computed there (how one knows a job used the whole cluster)."""
        engine = self.service.engine
        return dict(engine.computed_by) if engine is not None else {}

    async def __del__(self) -> None:
        await self.running.aclose()


class Ingress:
    """The HTTP replicas: the emoserve app with a remote engine, forwarding the store's routes to its owner."""

    def __init__(self, settings: Settings, engine: Any, store: Any):
        from ray import serve

        app_name = serve.get_replica_context().app_name
        checks = [functools.partial(missing_replicas, app_name, ENGINE),
                  functools.partial(missing_replicas, app_name, STORE), functools.partial(store_problem, store)]
        service = Service(settings, connect_engine=functools.partial(RemoteEngine.connect, engine, settings.engine),
                          holds_store=False, health_checks=checks)
        self.emoserve_app = create_app(service=service)  # `app` is Serve's
        self.emoserve_app.add_middleware(ForwardToOwner, owner=store, prefixes=FORWARDED,
                                         max_body_bytes=settings.store.upload_max_chunk_bytes + FORWARD_HEADROOM_BYTES,
                                         idle_timeout_s=settings.store.upload_body_timeout_s)

    def __serve_build_asgi_app__(self):
        return WithoutRequestIdHeader(self.emoserve_app)


class WithoutRequestIdHeader:
    """Serve's proxy adds X-Request-ID to every answer (the client's, or its own, which it also hands the app as
    the request's): the app's would make the header appear twice."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_without(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [(k, v) for k, v in message.get("headers", [])
                                                  if k.lower() != b"x-request-id"]}
            await send(message)

        await self.app(scope, receive, send_without if scope["type"] == "http" else send)


def missing_replicas(app_name: str, deployment: str) -> str | None:
    """Why the deployment has less capacity than Serve aims for (a replica died and is being replaced), or None."""
    from ray import serve

    status = serve.status().applications.get(app_name)
    overview = status.deployments.get(deployment) if status is not None else None
    if overview is None:
        return f"{deployment} is not deployed"
    states = overview.replica_states
    running = states.get("RUNNING", 0)
    coming = sum(n for state, n in states.items() if state in ("STARTING", "RECOVERING", "UPDATING"))
    if overview.status == "UNHEALTHY" or (coming and overview.status != "UPSCALING"):
        why = overview.message or "a replica died"
        return f"{deployment}: {running} replicas running, {coming} being replaced ({why})"
    return None


def store_problem(store: Any) -> str | None:
    """The store owner's disk problem, or that it does not answer (it is being replaced)."""
    from ray.exceptions import RayActorError

    try:
        return store.storage_problem.remote().result(timeout_s=STORE_CHECK_TIMEOUT_S)
    except (RayActorError, TimeoutError) as e:
        return f"the upload store does not answer ({type(e).__name__}); it is being replaced"


def emoserve_environment() -> dict[str, str]:
    """The `EMOSERVE_*` variables of this process, for every replica (logging, paths, limits read there too)."""
    import os

    return {k: v for k, v in os.environ.items() if k.upper().startswith("EMOSERVE_")}


def build(settings: Settings):
    """The Serve application: Ingress → (EmotionEngine, Store → EmotionEngine)."""
    from ray import serve

    ray_settings = settings.ray
    runtime_env = {"env_vars": emoserve_environment()}
    store = serve.deployment(StoreOwner, name=STORE, num_replicas=1, max_ongoing_requests=STORE_MAX_ONGOING,
                             health_check_period_s=HEALTH_CHECK_PERIOD_S,
                             ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE: 0.001},
                                                "runtime_env": runtime_env})
    ingress = serve.deployment(serve.ingress()(Ingress), name=INGRESS, num_replicas=ray_settings.ingress_replicas,
                               max_ongoing_requests=ray_settings.ingress_max_ongoing_requests,
                               ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env})
    model = engine_deployment(settings).bind(settings)
    return ingress.bind(settings, model, store.bind(settings, model))


def engine_deployment(settings: Settings):
    """EmotionEngine, autoscaled on the clips in flight per replica between the settings' min and max replicas."""
    from ray import serve

    ray_settings = settings.ray
    autoscaling = {"min_replicas": ray_settings.min_replicas, "initial_replicas": ray_settings.min_replicas,
                   "max_replicas": max_replicas(settings),
                   **ray_settings.model_dump(include={"target_ongoing_requests", "upscale_delay_s",
                                                      "downscale_delay_s", "look_back_period_s",
                                                      "metrics_interval_s"})}
    return serve.deployment(EmotionEngine, name=ENGINE, max_ongoing_requests=ray_settings.max_ongoing_requests,
                            max_queued_requests=ray_settings.max_queued_requests,
                            health_check_period_s=HEALTH_CHECK_PERIOD_S, autoscaling_config=autoscaling,
                            ray_actor_options={"num_cpus": ray_settings.replica_cpus,
                                               "num_gpus": ray_settings.replica_gpus,
                                               "runtime_env": {"env_vars": emoserve_environment()}})


def max_replicas(settings: Settings) -> int:
    """The setting, else as many replicas as the cluster's CPUs (or GPUs) fit."""
    import ray

    ray_settings = settings.ray
    if ray_settings.max_replicas is not None:
        return ray_settings.max_replicas
    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 0) / ray_settings.replica_cpus]
    if ray_settings.replica_gpus:
        fits.append(resources.get("GPU", 0) / ray_settings.replica_gpus)
    return max(ray_settings.min_replicas, int(min(fits)))


def app_builder(args: dict[str, str]):
    """`serve run emoserve.scale.serve:app_builder` (deploy/ray/serve.yaml): settings from the environment,
    with the config file's `args` on top, named like their variables less `EMOSERVE_` (`ray_min_replicas: 2`)."""
    return build(Settings.from_flat(**args))


def deploy(settings: Settings, *, proxy_location: str = "EveryNode") -> None:
    """Deploy the application on the connected cluster, serving HTTP on the settings' host and port."""
    from ray import serve

    serve.start(proxy_location=proxy_location,
                http_options={"host": settings.server.host, "port": settings.server.port})
    serve.run(build(settings), name=APP_NAME, route_prefix="/")


def run(address: str, settings: Settings, say: Callable[[str], None] = print) -> None:
    """`emoserve serve --ray ADDRESS`: deploy, serve until SIGTERM or Ctrl-C, then take the application down."""
    from ray import serve

    from .corpus import ray_connection

    stopped = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stopped.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ray_connection(address):
            deploy(settings)
            say(f"emoserve on Ray Serve at http://{settings.server.host}:{settings.server.port} (Ctrl-C stops it)")
            stopped.wait()
            serve.delete(APP_NAME)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
