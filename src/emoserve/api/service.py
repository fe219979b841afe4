"""The running service: settings, metrics, and the model/engine that loads in the background.

The port answers at once; `/health` says `loading` until the model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..emotion_model import EmotionModel
from ..engine import Engine
from ..errors import EmoserveError
from ..settings import Settings
from .metrics import ServiceMetrics

load_log = logging.getLogger("emoserve.model_load")
error_log = logging.getLogger("emoserve.error")


@dataclass
class Service:
    settings: Settings
    engine: Engine | None = None
    status: str = "loading"  # loading → healthy | failed
    error: str | None = None
    model: EmotionModel | None = None
    metrics: ServiceMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(lambda: self.engine.stats if self.engine else None)

    async def load(self, model: EmotionModel | None = None) -> None:
        """Load (unless given) and warm up the model, then start the engine. Never raises."""
        s = self.settings
        try:
            started = time.perf_counter()
            engine = await asyncio.to_thread(Engine.from_settings, s, model)  # loads the model unless given
            model = engine.model
            loaded = time.perf_counter()
            engine.observers.append(self.metrics.observe_batch)
            await engine.start()  # includes the warm-up of the common batch shapes
            warm = time.perf_counter()
        except Exception as e:  # a model that cannot load is reported by /health, not a crash loop
            self.status = "failed"
            self.error = e.message if isinstance(e, EmoserveError) else f"{type(e).__name__}: {e}"
            error_log.exception("model %s failed to load", s.model)
            load_log.error("model %s failed to load: %s", s.model, self.error, extra={"model": s.model})
            return
        self.model, self.engine, self.status = model, engine, "healthy"
        self.metrics.model_ready.set(1)
        info = model.info
        load_log.info("model %s ready", info.name, extra={
            "model": info.name, "device": info.device, "dtype": info.dtype, "weights": info.weights,
            "load_s": round(loaded - started, 3), "warmup_s": round(warm - loaded, 3)})

    async def close(self) -> None:
        """Stop taking work, finish what is in flight, then release the model."""
        if self.engine is not None:
            await self.engine.stop(drain=True)
            load_log.info("model %s stopped", self.model.name, extra={"model": self.model.name})
        self.metrics.model_ready.set(0)

    def ready_engine(self) -> Engine:
        """The engine, or a 503 that says why there is none yet."""
        if self.engine is not None:
            return self.engine
        if self.status == "failed":
            raise EmoserveError(f"the model failed to load: {self.error}", code="model_unavailable")
        raise EmoserveError("the model is still loading; retry shortly", code="model_loading",
                            details={"retry_after": 2})
