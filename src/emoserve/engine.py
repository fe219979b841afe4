"""The inference engine: one model, one bounded queue, dynamic batches, results as each batch ends.

    engine = Engine(model)
    await engine.start()
    wav, result = await engine.analyze(upload_bytes, granularity="frame")
    await engine.stop()

Stages, each on its own thread so the model never waits for the CPU work around it:

    decode (thread pool) ──► submit (queue, bounded) ──► batch loop (asyncio) ──► predict (one compute thread)
                                                                                      └─► results, per caller

The batch loop takes the oldest queued clip and the clips closest to it in length that fit the
padded-samples budget (`batching.select_batch`), waiting at most `max_wait_ms` for company. A
batch that runs out of memory is split in halves and retried; a clip that alone does not fit
fails with `ClipTooLarge`, and the engine goes on serving. A full queue raises `EngineOverloaded`
with a retry-after estimate; callers that go away are dropped before compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from .audio import AudioSource, decode_audio
from .batching import select_batch
from .emotion_model import EmotionModel
from .errors import EmoserveError, InvalidParameterError
from .model.config import SAMPLE_RATE
from .results import ClipOutput, EmotionResult, check_granularity, make_result
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# On a CPU a batch adds little throughput (plus_large, 2 cores, s per 5 s clip at batch 1/2/4/8: fp32
# 0.37/0.34/0.33/0.34, int8 0.19/0.21/0.21/0.22) and makes each of its callers wait for all of it.
# `max_padding`: the padded share of a batch beyond which padding costs more than batching saves
# (on a CPU padding is computed like audio and batching saves ≤ ~10%).
CPU_LIMITS = {"max_batch_size": 4, "max_batch_samples": 4 * 10 * SAMPLE_RATE, "max_padding": 0.1}
GPU_LIMITS = {"max_batch_size": 64, "max_batch_samples": 64 * 10 * SAMPLE_RATE, "max_padding": 0.25}
WARMUP_SECONDS = (1.0, 5.0, 10.0)


class EngineOverloaded(EmoserveError):
    """The queue is full: retry after `retry_after` seconds (the API answers 503 + Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class EngineNotRunning(EmoserveError):
    """The engine is not started yet, or is shutting down (503, `model_loading`)."""

    code = "model_loading"

    def __init__(self, message: str, *, retry_after: float = 5.0):
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class ClipTooLarge(EmoserveError):
    """One clip alone does not fit the device's memory; long audio belongs to the upload/jobs path."""

    code = "audio_too_long"


@dataclass(frozen=True)
class BatchStats:
    """What one batch did: what an observer (the API's Prometheus metrics) records."""

    size: int
    real_samples: int
    padded_samples: int
    compute_s: float  # wall time of the forward pass(es), OOM retries included
    queue_wait_s: float  # the longest wait in the queue of the batch's clips
    splits: int  # OOM halvings it took

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.real_samples / self.padded_samples if self.padded_samples else 0.0

    @property
    def audio_seconds(self) -> float:
        return self.real_samples / SAMPLE_RATE


@dataclass
class EngineStats:
    """Running totals since start, read by whoever exports metrics."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0  # overloaded
    cancelled: int = 0  # callers gone before compute
    batches: int = 0
    oom_splits: int = 0
    audio_seconds: float = 0.0
    real_samples: int = 0
    padded_samples: int = 0
    compute_seconds: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size → how many batches


BatchObserver = Callable[[BatchStats], None]


@dataclass(eq=False)
class Request:
    waveform: np.ndarray
    granularity: str
    return_embedding: bool
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def samples(self) -> int:
        return len(self.waveform)


def default_threads() -> int:
    """One compute thread per CPU this process may use (more only adds contention)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Engine:
    """Owns a model and its request queue; batches concurrent callers into padded forward passes."""

    def __init__(self, model: EmotionModel, *, max_batch_size: int | None = None,
                 max_batch_samples: int | None = None, max_wait_ms: float = 5.0, max_queue: int = 256,
                 decode_workers: int = 2, threads: int | None = None, warmup: bool = True,
                 observers: Sequence[BatchObserver] = ()):
        defaults = GPU_LIMITS if model.device.type == "cuda" else CPU_LIMITS
        self.max_batch_size = defaults["max_batch_size"] if max_batch_size is None else max_batch_size
        self.max_batch_samples = defaults["max_batch_samples"] if max_batch_samples is None else max_batch_samples
        if self.max_batch_size < 1 or self.max_batch_samples < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InvalidParameterError("max_batch_size, max_batch_samples and max_queue must be ≥ 1, "
                                        "max_wait_ms ≥ 0")
        self.max_padding = defaults["max_padding"]
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.threads = threads or default_threads()
        self.warmup = warmup
        self.stats = EngineStats()
        self.observers: list[BatchObserver] = list(observers)
        self._model = model
        self._decode_workers = decode_workers
        self._pending: deque[Request] = deque()
        self._throughput = 0.0  # audio seconds per compute second, a running estimate for retry-after
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._accepting = False
        self._compute_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._own_loop_thread: threading.Thread | None = None
        self._own_loop_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, model: EmotionModel | None = None) -> Engine:
        """An engine configured by `EMOSERVE_*` settings, loading the model they name unless given."""
        if model is None:
            model = EmotionModel.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype,
                                                 cache_dir=settings.cache, source=settings.source,
                                                 precision=settings.precision, quantize=settings.quantize,
                                                 compile=settings.compile)
        return cls(model, max_batch_size=settings.max_batch_size, max_batch_samples=settings.max_batch_samples,
                   max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                   decode_workers=settings.decode_workers, threads=settings.threads)

    # ---- state ----

    @property
    def model(self) -> EmotionModel:
        return self._model

    @property
    def is_running(self) -> bool:
        return self._accepting and self._task is not None and not self._task.done()

    def device_memory_bytes(self) -> int | None:
        """Accelerator memory held by torch for this model (None on CPU)."""
        device = self._model.device
        return torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    @property
    def queue_depth(self) -> int:
        """Clips waiting for a batch (not yet computing)."""
        return len(self._pending)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Start the batching loop on the running event loop, after warming up the common shapes."""
        if self._task is not None:
            raise RuntimeError("the engine is already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._compute_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="emoserve-compute", initializer=torch.set_num_threads, initargs=(self.threads,))
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(
            self._decode_workers, thread_name_prefix="emoserve-decode")
        if self.warmup:
            await self._loop.run_in_executor(self._compute_pool, self._warm_up)
        self._accepting = True
        self._task = asyncio.create_task(self._batch_loop(), name="emoserve-batch-loop")
        log.info("engine started: %s on %s/%s, batches ≤ %d clips and ≤ %.1f padded s, queue ≤ %d, %d threads",
                 self._model.name, self._model.device, self._model.info.dtype, self.max_batch_size,
                 self.max_batch_samples / SAMPLE_RATE, self.max_queue, self.threads)

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; finish the queue (`drain`) or fail it, finish the batch in flight, exit."""
        if self._task is None:
            return
        self._accepting = False
        if not drain:
            while self._pending:
                request = self._pending.popleft()
                if not request.future.done():
                    request.future.set_exception(EngineNotRunning("the engine is shutting down"))
        self._wakeup.set()
        await self._task
        self._task = None
        for pool in (self._compute_pool, self._decode_pool):
            pool.shutdown(wait=True)
        log.info("engine stopped: %d clips in %d batches", self.stats.completed, self.stats.batches)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    def _warm_up(self) -> None:
        """First calls at a shape allocate and pick kernels: pay that before the first request."""
        torch.set_num_threads(self.threads)
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        for seconds in WARMUP_SECONDS:
            samples = int(seconds * SAMPLE_RATE)
            # a GPU picks kernels per shape, so it warms the full batches; a CPU needs one clip per length
            batch = max(1, min(self.max_batch_size, self.max_batch_samples // samples)) \
                if self._model.device.type == "cuda" else 1
            self._model.predict([(0.1 * rng.standard_normal(samples)).astype(np.float32)] * batch, frames=True)
        if self._model.compiled and self.max_batch_size > 1:
            # torch.compile specializes batch size 1 and the unpadded case: compile the batched graphs now
            clip = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
            self._model.predict([clip, clip])
            self._model.predict([clip, clip[: SAMPLE_RATE // 2]])
        log.info("engine warmed up in %.2fs", time.perf_counter() - started)

    # ---- the public calls ----

    async def decode(self, source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None,
                     max_bytes: int | None = None) -> np.ndarray:
        """Decode and resample on the decode pool, while the compute thread runs the model."""
        if self._decode_pool is None:
            raise EngineNotRunning("the engine is not started")
        call = functools.partial(decode_audio, source, sample_rate=sample_rate, max_seconds=max_seconds,
                                 max_bytes=max_bytes, min_samples=self._model.config.min_samples)
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, call)

    def check_capacity(self) -> None:
        """Raise `EngineOverloaded` (with a retry-after hint) if the queue is full.

        `submit` checks it; callers may check first to refuse before paying for decoding.
        """
        if len(self._pending) >= self.max_queue:
            self.stats.rejected += 1
            raise EngineOverloaded(f"the queue is full ({self.max_queue} clips waiting); retry shortly",
                                   retry_after=self.retry_after())

    async def submit(self, waveform: np.ndarray, *, granularity: str = "utterance",
                     return_embedding: bool = False) -> EmotionResult:
        """Queue one 16 kHz mono clip and wait for its batch; the result is this clip's alone."""
        check_granularity(granularity)
        waveform = np.ascontiguousarray(waveform, dtype=np.float32)
        if waveform.ndim != 1:
            raise InvalidParameterError(f"submit takes one mono clip (samples,), got shape {waveform.shape}")
        self._model.check_length(len(waveform))
        if not self.is_running:
            raise EngineNotRunning("the engine is not running (starting up or shutting down)")
        self.check_capacity()
        request = Request(waveform, granularity, return_embedding, self._loop.create_future())
        self._pending.append(request)
        self.stats.submitted += 1
        self._wakeup.set()
        return await request.future  # a cancelled caller cancels the future: the loop then skips it

    async def analyze(self, source: AudioSource, *, granularity: str = "utterance", return_embedding: bool = False,
                      sample_rate: int | None = None, max_seconds: float | None = None,
                      max_bytes: int | None = None) -> tuple[np.ndarray, EmotionResult]:
        """decode → submit: the audio the model heard (16 kHz mono float32) and its result."""
        check_granularity(granularity)
        waveform = await self.decode(source, sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes)
        return waveform, await self.submit(waveform, granularity=granularity, return_embedding=return_embedding)

    def analyze_sync(self, source: AudioSource, *, granularity: str = "utterance", return_embedding: bool = False,
                     sample_rate: int | None = None, max_seconds: float | None = None,
                     max_bytes: int | None = None, timeout: float | None = None) -> tuple[np.ndarray, EmotionResult]:
        """`analyze` for code without an event loop (CLI, UI callbacks, job threads).

        Runs on the loop the engine was started on; an engine not started yet is started on a
        background loop of its own (`close` ends it).
        """
        return self._run_sync(self.analyze(source, granularity=granularity, return_embedding=return_embedding,
                                           sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes),
                              timeout)

    def predict(self, waveforms: Sequence[np.ndarray], frames: bool = False) -> list[ClipOutput]:
        """`EmotionModel.predict` for worker threads (long-audio jobs): one batch, run on the compute thread.

        The job's batches and the request queue's take turns on the engine's one compute thread and
        its torch thread pool: a job running the model on a thread of its own would fight the
        engine for the cores (up to 2x slower, measured). Out-of-memory batches are halved as in
        the queue; the batch counts in `stats` and the observers. Blocks the caller until done:
        call it from a worker thread, never from the engine's event loop.
        """
        waveforms = [np.ascontiguousarray(w, dtype=np.float32) for w in waveforms]
        if not waveforms:
            return []
        pool = self._compute_pool
        if pool is None:
            raise EngineNotRunning("the engine is not started")
        try:
            future = pool.submit(self._compute_direct, waveforms, frames, time.perf_counter())
        except RuntimeError as e:  # shut down between the check and the submit
            raise EngineNotRunning("the engine is shutting down") from e
        return future.result()

    def close(self, drain: bool = True) -> None:
        """Stop an engine from synchronous code, and end its own background loop if it has one."""
        if self._loop is None:
            return
        self._run_sync(self.stop(drain=drain), None)
        if self._own_loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._own_loop_thread.join()
            self._own_loop_thread = None
        self._loop = None

    def _run_sync(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        with self._own_loop_lock:
            if self._loop is None:
                self._start_own_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coroutine.close()
            raise RuntimeError("analyze_sync called from the engine's own event loop: await analyze() instead")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _start_own_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._own_loop_thread = threading.Thread(target=loop.run_forever, name="emoserve-engine-loop", daemon=True)
        self._own_loop_thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result()

    def retry_after(self) -> float:
        """Seconds until the queue has room: queued audio over the measured throughput (≥ 1 s)."""
        queued = sum(r.samples for r in self._pending) / SAMPLE_RATE
        if self._throughput <= 0:
            return 1.0
        return float(max(1, math.ceil(queued / self._throughput)))

    # ---- the batch loop ----

    async def _batch_loop(self) -> None:
        while True:
            if not self._pending:
                if not self._accepting:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_company()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _wait_for_company(self) -> None:
        """Give the oldest clip up to `max_wait_ms` for others to share its batch."""
        deadline = self._pending[0].enqueued + self.max_wait_s
        while self._accepting and len(self._pending) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[Request]:
        """Drop callers that went away, then the oldest clip and its nearest neighbours in length."""
        live = [r for r in self._pending if not r.future.done()]
        self.stats.cancelled += len(self._pending) - len(live)
        if not live:
            self._pending.clear()
            return []
        chosen = select_batch([r.samples for r in live], 0, self.max_batch_size, self.max_batch_samples,
                              self.max_padding)
        taken = {id(live[i]) for i in chosen}
        self._pending = deque(r for r in live if id(r) not in taken)
        return [live[i] for i in chosen]

    async def _run_batch(self, batch: list[Request]) -> None:
        started = time.perf_counter()
        queue_wait = started - min(r.enqueued for r in batch)
        try:
            outcomes, splits = await self._loop.run_in_executor(self._compute_pool, self._compute, batch)
        except Exception as error:  # a bug past predict: fail this batch, keep serving
            log.exception("a batch of %d clips failed", len(batch))
            outcomes, splits = [EmoserveError(f"the engine failed on this batch: {error}")] * len(batch), 0
        compute_s = time.perf_counter() - started
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue  # cancelled while computing
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
        self._record([r.samples for r in batch], sum(isinstance(o, BaseException) for o in outcomes), compute_s,
                     queue_wait, splits)

    def _compute(self, batch: list[Request]) -> tuple[list[EmotionResult | BaseException], int]:
        """predict, halving on out-of-memory; runs on the compute thread."""
        frames = any(r.granularity == "frame" for r in batch)
        outputs, splits = self._predict_splitting([r.waveform for r in batch], frames)
        outcomes: list[EmotionResult | BaseException] = []
        for request, out in zip(batch, outputs, strict=True):
            if isinstance(out, BaseException):
                outcomes.append(out)
            else:
                outcomes.append(make_result(out, self._model.labels, self._model.name, request.granularity,
                                            request.return_embedding))
        return outcomes, splits

    def _compute_direct(self, waveforms: list[np.ndarray], frames: bool, enqueued: float) -> list[ClipOutput]:
        """`predict` on the compute thread: the outputs, or the first clip's error raised."""
        started = time.perf_counter()
        outputs, splits = self._predict_splitting(waveforms, frames)
        failed = sum(isinstance(o, BaseException) for o in outputs)
        self._loop.call_soon_threadsafe(self._record_direct, [len(w) for w in waveforms], failed,
                                        time.perf_counter() - started, started - enqueued, splits)
        for out in outputs:
            if isinstance(out, BaseException):
                raise out
        return outputs

    def _record_direct(self, lengths: list[int], failed: int, compute_s: float, queue_wait_s: float,
                       splits: int) -> None:
        self.stats.submitted += len(lengths)
        self._record(lengths, failed, compute_s, queue_wait_s, splits)

    def _predict_splitting(self, waveforms: list[np.ndarray], frames: bool) -> tuple[list[ClipOutput | BaseException],
                                                                                    int]:
        try:
            return self._model.predict(waveforms, frames=frames), 0
        except Exception as error:
            if not is_out_of_memory(error):
                log.exception("a batch of %d clips failed", len(waveforms))
                failure = EmoserveError(f"the model failed on this batch: {error}")
                return [failure] * len(waveforms), 0
            self._free_memory()
            if len(waveforms) == 1:
                seconds = len(waveforms[0]) / SAMPLE_RATE
                log.error("out of memory on one clip of %.1f s alone: refused", seconds)
                return [ClipTooLarge(f"a clip of {seconds:.1f} s does not fit in the model's memory on this "
                                     f"server; send shorter audio, or use the upload API, which splits long "
                                     f"audio")], 0
        half = len(waveforms) // 2
        log.warning("out of memory on a batch of %d clips: retrying as %d + %d", len(waveforms), half,
                    len(waveforms) - half)
        first, first_splits = self._predict_splitting(waveforms[:half], frames)
        second, second_splits = self._predict_splitting(waveforms[half:], frames)
        return first + second, 1 + first_splits + second_splits

    def _free_memory(self) -> None:
        if self._model.device.type == "cuda":
            torch.cuda.empty_cache()

    def _record(self, lengths: list[int], failed: int, compute_s: float, queue_wait_s: float, splits: int) -> None:
        """Totals and observers, on the event loop's thread (callers of `predict` hand their batches over)."""
        stats = BatchStats(size=len(lengths), real_samples=sum(lengths), padded_samples=len(lengths) * max(lengths),
                           compute_s=compute_s, queue_wait_s=queue_wait_s, splits=splits)
        totals = self.stats
        totals.completed += len(lengths) - failed
        totals.failed += failed
        totals.batches += 1
        totals.oom_splits += splits
        totals.audio_seconds += stats.audio_seconds
        totals.real_samples += stats.real_samples
        totals.padded_samples += stats.padded_samples
        totals.compute_seconds += compute_s
        totals.batch_sizes[len(lengths)] = totals.batch_sizes.get(len(lengths), 0) + 1
        if compute_s > 0:
            rate = stats.audio_seconds / compute_s
            self._throughput = rate if self._throughput == 0 else 0.8 * self._throughput + 0.2 * rate
        for observer in self.observers:
            try:
                observer(stats)
            except Exception:
                log.exception("a batch observer failed")
