"""The engine's interface over the `EmotionEngine` deployment: what a `Service` on Ray runs instead of a local engine.

    engine = await RemoteEngine.connect(handle, settings.engine)   # a DeploymentHandle of EmotionEngine
    waveform, result = await engine.analyze(upload_bytes)            # decoded here, computed on a replica

Routes, streams, the UI and the job runner call it exactly as they call `inference.engine.Engine`:
decoding runs here (the ingress's CPUs), each clip is one call to a model replica, whose own
engine batches it with the clips other callers sent there. `submit_blocking` sends a job's clips
as separate calls, so Serve spreads one job's segments over every model replica.

Failures keep the local engine's meaning:
- Serve's queue at this caller full (`max_queued_requests`, `BackPressureError`) or a replica's
  engine queue full: `EngineOverloaded` (503 + Retry-After) for live callers; a job's clips wait
  and try again, as they wait for room in a local engine.
- A replica that dies with the clip in flight (`RayActorError`: OOM, kill -9, node loss): the clip
  is sent once more, to another replica (analysis is idempotent); if that fails too, 503 + Retry-After.
- A replica's `EmoserveError` (too short, too long, ...) comes back as the same code and details.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import AudioSource
from ..config import EngineConfig
from ..errors import EmoserveError
from ..inference.engine import (
    BatchObserver,
    DecodeThenSubmit,
    EngineNotRunning,
    EngineOverloaded,
    EngineStats,
    decode_on,
)
from ..inference.results import ClipOutput, EmotionResult, ModelInfo, check_granularity
from ..model.config import Emotion2vecConfig

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0  # Serve's queue gives no estimate; the local engine's shortest hint


@dataclass(frozen=True)
class RemoteModel:
    """What callers read of the model (`engine.model`): the replicas' description, no weights."""

    info: ModelInfo
    config: Emotion2vecConfig

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def weights(self) -> str:
        return self.info.weights


@dataclass(frozen=True)
class Refusal:
    """An `EmoserveError` of a replica, as data: Ray cannot rebuild exceptions whose constructors take keywords."""

    code: str
    message: str
    details: dict

    @classmethod
    def of(cls, error: EmoserveError) -> Refusal:
        return cls(error.code, error.message, error.details)

    def error(self) -> EmoserveError:
        if self.code == EngineOverloaded.code:  # streams retry on this class
            return EngineOverloaded(self.message, retry_after=self.details.get("retry_after", RETRY_AFTER_S))
        return EmoserveError(self.message, code=self.code, details=self.details)


@dataclass(frozen=True)
class Answer:
    """A replica's reply: the value or its refusal, and the replica (and node) that computed it."""

    value: Any
    refusal: Refusal | None
    replica: str
    node: str


class RemoteEngine(DecodeThenSubmit):
    """`Engine`'s interface (decode, submit, analyze, submit_blocking, start/stop, stats) over a DeploymentHandle."""

    def __init__(self, handle: Any, model: RemoteModel, *, decode_workers: int = EngineConfig().decode_workers):
        self.handle = handle
        self.model = model
        self.stats = EngineStats()
        self.observers: list[BatchObserver] = []  # batches run on the replicas: their logs and Ray's metrics
        self.computed_by: Counter[str] = Counter()  # node id → clips its replicas computed for this engine
        self.queue_depth = 0  # clips sent and not answered yet
        self._decode_workers = decode_workers
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def connect(cls, handle: Any, config: EngineConfig) -> RemoteEngine:
        """Ask a replica what model the deployment serves."""
        info, model_config = await handle.describe.remote()
        return cls(handle, RemoteModel(info, model_config), decode_workers=config.decode_workers)

    @property
    def is_running(self) -> bool:
        return self._decode_pool is not None

    def device_memory_bytes(self) -> int | None:
        return None  # the model's memory is the replicas'

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(self._decode_workers,
                                                                  thread_name_prefix="emoserve-decode")

    async def stop(self, drain: bool = True) -> None:
        """Stop taking work; clips already sent are answered by their replicas."""
        pool, self._decode_pool = self._decode_pool, None
        if pool is not None:
            pool.shutdown(wait=drain)

    # ---- the calls of `Engine` ----

    async def decode(self, source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None,
                     max_bytes: int | None = None, split: bool = False) -> np.ndarray:
        return await decode_on(self._decode_pool, source, min_samples=self.model.config.min_samples,
                               sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes, split=split)

    def check_capacity(self) -> None:
        """Nothing to check here: Serve's queue and the replicas' refuse when they are full."""

    async def submit(self, waveform: np.ndarray, *, granularity: str = "utterance", return_embedding: bool = False,
                     origin: str = "request") -> EmotionResult:
        check_granularity(granularity)
        self._check_running()
        return await self._call("submit", np.ascontiguousarray(waveform, dtype=np.float32), granularity=granularity,
                                return_embedding=return_embedding, origin=origin)

    def submit_blocking(self, waveforms: Sequence[np.ndarray], frames: bool = False, *,
                        origin: str = "thread") -> list[ClipOutput]:
        """From a thread: each clip is its own call (so they spread over the replicas), waiting out full queues."""
        self._check_running()
        clips = [np.ascontiguousarray(w, dtype=np.float32) for w in waveforms]
        future = asyncio.run_coroutine_threadsafe(self._predict_all(clips, frames, origin), self._loop)
        return future.result()

    # ---- the calls to the replicas ----

    async def _predict_all(self, clips: list[np.ndarray], frames: bool, origin: str) -> list[ClipOutput]:
        return list(await asyncio.gather(*(self._predict_waiting(clip, frames, origin) for clip in clips)))

    async def _predict_waiting(self, clip: np.ndarray, frames: bool, origin: str) -> ClipOutput:
        """Accepted work is finished: a full queue is waited out, never passed on as a failure."""
        while True:
            try:
                return await self._call("predict", clip, frames=frames, origin=origin)
            except EngineOverloaded as e:
                self._check_running()
                await asyncio.sleep(e.retry_after)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call to a replica; once more on another if the replica died with it (RayActorError)."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        self.stats.submitted += 1
        self.queue_depth += 1
        try:
            for attempt in (1, 2):
                try:
                    answer: Answer = await getattr(self.handle, method).remote(*args, **kwargs)
                    break
                except BackPressureError as e:
                    self.stats.rejected += 1
                    raise EngineOverloaded("every model replica is busy; retry shortly",
                                           retry_after=RETRY_AFTER_S) from e
                except RayActorError as e:
                    log.warning("a model replica died with a clip in flight (%s), attempt %d", type(e).__name__,
                                attempt)
                    if attempt == 2:
                        self.stats.failed += 1
                        raise EngineOverloaded("model replicas were lost; retry shortly while they are replaced",
                                               retry_after=RETRY_AFTER_S) from e
        finally:
            self.queue_depth -= 1
        self.computed_by[answer.node] += 1
        log.debug("%s (%s) computed on replica %s, node %s", method, kwargs.get("origin"), answer.replica,
                  answer.node)
        if answer.refusal is not None:
            self.stats.failed += 1
            raise answer.refusal.error()
        self.stats.completed += 1
        return answer.value

    def _check_running(self) -> None:
        if not self.is_running:
            raise EngineNotRunning("the engine is not running (starting up or shutting down)")
