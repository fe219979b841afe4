"""The composition root: settings, metrics, the model/engine that loads in the background, uploads and jobs.

The API (`api.app.create_app`) and the web UI alone (`ui.standalone_app`) both run one `Service`
through `Service.running`, their app's lifespan. The port answers at once; `/health` says
`loading` until the model is loaded and warmed up. The upload store opens first, so uploads (and
status reads) are taken while the model loads; the job runner starts once the model is ready and
sends its work through the engine's queue.

On a Ray cluster (`scale/serve.py`) the same `Service` runs with a remote engine (`connect_engine`:
an object with the engine's interface whose work runs on the model replicas) and, on the ingress
replicas, without the store (`holds_store=False`: one replica owns it and the others forward to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from .config import Settings
from .errors import EmoserveError, InsufficientStorageError
from .inference.emotion_model import EmotionModel
from .inference.engine import Engine
from .jobs.runner import JobRunner
from .jobs.store import Store
from .metrics import ServiceMetrics

load_log = logging.getLogger("emoserve.model_load")
error_log = logging.getLogger("emoserve.error")
log = logging.getLogger(__name__)

RUNNER_STOP_S = 60.0  # a job hands its work back at its next batch; a callback POST times out on its own


@dataclass
class Service:
    settings: Settings
    engine: Engine | None = None
    status: str = "loading"  # loading → healthy | failed
    error: str | None = None
    model: EmotionModel | None = None
    store: Store | None = None
    runner: JobRunner | None = None
    open_streams: int = 0  # WebSocket streams being served, against settings.stream.max_concurrent
    on_load_failure: Callable[[], None] | None = None  # `emoserve serve` exits then, so a supervisor restarts it
    connect_engine: Callable[[], Awaitable[Engine]] | None = None  # else the model loads here, in a local engine
    holds_store: bool = True  # opens the upload store and runs the jobs
    health_checks: list[Callable[[], str | None]] = field(default_factory=list)  # a reason to say degraded, or None
    metrics: ServiceMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(lambda: self.engine.stats if self.engine else None)

    @contextlib.asynccontextmanager
    async def running(self, model: EmotionModel | None = None) -> AsyncIterator[None]:
        """An app's lifespan: load in the background while the port answers, then close (a load in progress is
        cancelled). `model` skips loading `settings.model`."""
        loading = asyncio.create_task(self.load(model))
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await self.close()

    async def load(self, model: EmotionModel | None = None) -> None:
        """Open the store, load (unless given) and warm up the model, start the engine and the job runner.

        Never raises: a failure is reported by /health (and `on_load_failure` is called).
        """
        s = self.settings
        engine = runner = None
        try:
            if self.holds_store:
                store = await asyncio.to_thread(Store, s.store)
                await asyncio.to_thread(sweep_at_start, store)
                self.store = store
            started = time.perf_counter()
            if self.connect_engine is not None:
                engine = await self.connect_engine()
                model = engine.model
            else:
                if model is None:
                    model = await asyncio.to_thread(EmotionModel.from_config, s.model, s.engine.threads)
                engine = Engine.from_config(s.engine, model)
            loaded = time.perf_counter()
            engine.observers.append(self.metrics.observe_batch)
            await engine.start()  # includes the warm-up of the common batch shapes
            warm = time.perf_counter()
            if self.store is not None:
                # the job's segments and windows queue and batch with live requests, waiting for room when full
                predict = functools.partial(engine.submit_blocking, origin="job")
                runner = JobRunner(self.store, predict, labels=model.labels, model_name=model.name,
                                   min_samples=model.config.min_samples, options=s.longform, config=s.jobs)
                await asyncio.to_thread(runner.start)  # re-queues the jobs a crash left running
        except Exception as e:  # a model that cannot load is reported by /health, not a crash loop
            if engine is not None and engine.is_running:
                await engine.stop(drain=False)
            self.status = "failed"
            self.error = e.message if isinstance(e, EmoserveError) else f"{type(e).__name__}: {e}"
            error_log.exception("model %s failed to load", s.model.model)
            load_log.error("model %s failed to load: %s", s.model.model, self.error, extra={"model": s.model.model})
            if self.on_load_failure is not None:
                self.on_load_failure()
            return
        self.runner = runner
        self.model, self.engine, self.status = model, engine, "healthy"
        self.metrics.model_ready.set(1)
        info = model.info
        load_log.info("model %s ready", info.name, extra={
            "model": info.name, "device": info.device, "dtype": info.dtype, "weights": info.weights,
            "load_s": round(loaded - started, 3), "warmup_s": round(warm - loaded, 3)})

    async def close(self) -> None:
        """Stop taking work: the running job goes back to the queue, the engine finishes what is in flight."""
        if self.runner is not None:
            await asyncio.to_thread(self.runner.stop, RUNNER_STOP_S)
        if self.engine is not None:
            await self.engine.stop(drain=True)
            load_log.info("model %s stopped", self.model.name, extra={"model": self.model.name})
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        self.metrics.model_ready.set(0)

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and taking work: what /readyz answers (false again once a stop has begun)."""
        return self.status == "healthy" and self.engine is not None and self.engine.is_running

    def degraded_reason(self) -> str | None:
        """Why the service answers with less than it should (a full disk, missing model replicas), or None.

        Blocking (it may look at the disk or ask a cluster): call it from a thread."""
        checks = [self.store.storage_problem] if self.store is not None else []
        for check in checks + self.health_checks:
            reason = check()
            if reason:
                return reason
        return None

    def ready_engine(self) -> Engine:
        """The engine, or a 503 that says why there is none yet."""
        if self.engine is not None:
            return self.engine
        self.check_not_failed()
        raise EmoserveError("the model is still loading; retry shortly", code="model_loading",
                            details={"retry_after": 2})

    def ready_runner(self) -> JobRunner:
        """The job runner: it starts with the model, so jobs are refused (503) while the model loads."""
        self.ready_engine()
        return self.runner

    def ready_store(self) -> Store:
        """The upload store: open while the model loads, so uploads and status reads go on meanwhile."""
        self.check_not_failed()
        if self.store is None:
            raise EmoserveError("the service is starting; retry shortly", code="model_loading",
                                details={"retry_after": 1})
        return self.store

    def check_not_failed(self) -> None:
        if self.status == "failed":
            raise EmoserveError(f"the model failed to load: {self.error}", code="model_unavailable")


def sweep_at_start(store: Store) -> None:
    """Clear what a crash or a full disk left (files no row owns, old temp files) before taking uploads.

    A disk too full for the sweep's own commit does not stop the service: /health says degraded.
    """
    try:
        report = store.sweep()
    except InsufficientStorageError as e:
        error_log.error("start-up sweep: %s", e.message)
        return
    if report.removed_paths or report.expired_uploads:
        log.info("start-up sweep: %s", report)
