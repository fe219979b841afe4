"""The inference engine: one model, one bounded queue, dynamic batches, results as each batch ends.

    engine = Engine(model)
    await engine.start()
    wav, result = await engine.analyze(upload_bytes, granularity="frame")     # decode, then submit
    outputs = engine.submit_blocking(segments, frames=True, origin="job")    # from a worker thread
    await engine.stop()

Every clip the service analyses enters the one queue, through one of two doors onto it:

- `submit` (async, one clip, for the event loop): a full queue refuses at once with
  `EngineOverloaded` and a retry-after estimate, which the API answers as 503 + Retry-After.
- `submit_blocking` (a list of clips, for threads: long-audio jobs, the web UI's long files, the
  local client): the call is handed to the engine's loop (`asyncio.run_coroutine_threadsafe`),
  and its clips wait there for room in a full queue instead of failing, so a job's segments never
  fail on a burst of live requests; live requests meanwhile see the queue full and are refused.

Stages, each on its own thread so the model never waits for the CPU work around it:

    decode (thread pool) ──► queue (bounded) ──► batch loop (asyncio) ──► predict (one compute thread)
                                                                              └─► results, per caller

The batch loop takes the oldest queued clip and the clips closest to it in length that fit the
padded-samples budget (`batching.select_batch`), waiting at most `max_wait_ms` for company,
whichever door they came through: a job's segments and live requests share batches. A batch
that runs out of memory is split in halves and retried; a clip that alone does not fit fails with
`ClipTooLarge`, and the engine goes on serving. Callers that go away are dropped before compute.
`EngineThread` runs an engine on a loop of its own for programs that have none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..audio import AudioSource, decode_audio, decode_channels
from ..config import EngineConfig
from ..errors import EmoserveError, InvalidParameterError
from ..model.config import SAMPLE_RATE
from ..model.cpu import usable_cpus
from .batching import select_batch
from .emotion_model import EmotionModel
from .results import ClipOutput, EmotionResult, check_granularity, make_result

log = logging.getLogger(__name__)

# On a CPU a batch adds little throughput (plus_large, 2 cores, s per 5 s clip at batch 1/2/4/8: fp32
# 0.37/0.34/0.33/0.34, int8 0.19/0.21/0.21/0.22) and makes each of its callers wait for all of it.
# `max_padding`: the padded share of a batch beyond which padding costs more than batching saves
# (on a CPU padding is computed like audio and batching saves ≤ ~10%).
CPU_LIMITS = {"max_batch_size": 4, "max_batch_samples": 4 * 10 * SAMPLE_RATE, "max_padding": 0.1}
GPU_LIMITS = {"max_batch_size": 64, "max_batch_samples": 64 * 10 * SAMPLE_RATE, "max_padding": 0.25}
WARMUP_SECONDS = (1.0, 5.0, 10.0)
DEFAULTS = EngineConfig()  # the keyword defaults below: config.py is their one source


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
    origins: tuple[str, ...] = ()  # who sent each clip ("request", "stream", "job", "ui", ...), in batch order

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
    """One queued clip: what the model computes for it, and what its caller gets back."""

    waveform: np.ndarray
    frames: bool  # the caller needs the per-frame outputs
    finish: Callable[[ClipOutput], Any]  # the clip's output → the caller's answer (on the compute thread)
    future: asyncio.Future
    origin: str
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def samples(self) -> int:
        return len(self.waveform)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class DecodeThenSubmit:
    """`analyze` for every engine (local, or `scale.engine.RemoteEngine`): its `decode`, then its `submit`."""

    async def analyze(self, source: AudioSource, *, granularity: str = "utterance", return_embedding: bool = False,
                      sample_rate: int | None = None, max_seconds: float | None = None,
                      max_bytes: int | None = None, origin: str = "request") -> tuple[np.ndarray, EmotionResult]:
        """decode → submit: the audio the model heard (16 kHz mono float32) and its result."""
        check_granularity(granularity)
        waveform = await self.decode(source, sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes)
        return waveform, await self.submit(waveform, granularity=granularity, return_embedding=return_embedding,
                                           origin=origin)


class Engine(DecodeThenSubmit):
    """Owns a model and its request queue; batches concurrent callers into padded forward passes."""

    def __init__(self, model: EmotionModel, *, max_batch_size: int | None = DEFAULTS.max_batch_size,
                 max_batch_samples: int | None = DEFAULTS.max_batch_samples, max_wait_ms: float = DEFAULTS.max_wait_ms,
                 max_queue: int = DEFAULTS.max_queue, decode_workers: int = DEFAULTS.decode_workers,
                 threads: int | None = DEFAULTS.threads, warmup: bool = True, observers: Sequence[BatchObserver] = ()):
        defaults = GPU_LIMITS if model.device.type == "cuda" else CPU_LIMITS
        self.max_batch_size = defaults["max_batch_size"] if max_batch_size is None else max_batch_size
        self.max_batch_samples = defaults["max_batch_samples"] if max_batch_samples is None else max_batch_samples
        if self.max_batch_size < 1 or self.max_batch_samples < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InvalidParameterError("max_batch_size, max_batch_samples and max_queue must be ≥ 1, "
                                        "max_wait_ms ≥ 0")
        self.max_padding = defaults["max_padding"]
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.threads = threads or usable_cpus()  # one per CPU: more only adds contention
        self.warmup = warmup
        self.stats = EngineStats()
        self.observers: list[BatchObserver] = list(observers)
        self._model = model
        self._decode_workers = decode_workers
        self._pending: deque[Request] = deque()
        self._throughput = 0.0  # audio seconds per compute second, a running estimate for retry-after
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None  # set when a clip is queued (or the engine stops)
        self._room: asyncio.Event | None = None  # set when clips leave the queue (or the engine stops)
        self._accepting = False
        self._compute_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, config: EngineConfig, model: EmotionModel) -> Engine:
        """An engine with the knobs of its settings section (`Settings().engine`)."""
        return cls(model, **config.model_dump())

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
        self._room = asyncio.Event()
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
        self._room.set()  # submissions waiting for room give up
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
                     max_bytes: int | None = None, split: bool = False) -> np.ndarray:
        """Decode and resample on the decode pool, while the compute thread runs the model.

        `split`: keep the channels apart, (channels, samples) (`decode_channels`); else mixed to mono.
        """
        return await decode_on(self._decode_pool, source, min_samples=self._model.config.min_samples,
                               sample_rate=sample_rate, max_seconds=max_seconds, max_bytes=max_bytes, split=split)

    def check_capacity(self) -> None:
        """Raise `EngineOverloaded` (with a retry-after hint) if the queue is full.

        `submit` checks it; callers may check first to refuse before paying for decoding.
        """
        if len(self._pending) >= self.max_queue:
            self.stats.rejected += 1
            raise EngineOverloaded(f"the queue is full ({self.max_queue} clips waiting); retry shortly",
                                   retry_after=self.retry_after())

    async def submit(self, waveform: np.ndarray, *, granularity: str = "utterance", return_embedding: bool = False,
                     origin: str = "request") -> EmotionResult:
        """Queue one 16 kHz mono clip and wait for its batch; the result is this clip's alone.

        A full queue raises `EngineOverloaded` at once: live callers are told to come back later.
        """
        check_granularity(granularity)
        waveform = self._checked_clip(waveform)
        self._check_running()
        self.check_capacity()
        finish = functools.partial(make_result, labels=self._model.labels, model=self._model.name,
                                   granularity=granularity, return_embedding=return_embedding)
        # a cancelled caller cancels the future: the batch loop then skips the clip
        return await self._enqueue(waveform, granularity == "frame", finish, origin)

    def submit_blocking(self, waveforms: Sequence[np.ndarray], frames: bool = False, *,
                        origin: str = "thread") -> list[ClipOutput]:
        """Queue clips from a thread without an event loop, and block until all are computed.

        The model's outputs (`EmotionModel.predict`'s, so this is a batch-predict callable for
        `longform.analyze_long`), in order; the first clip's failure is raised. The clips go
        through the same queue and batches as `submit`'s, but a full queue makes them wait for
        room, never fail: work already accepted (a job, a long file) is finished, while live
        requests are the ones refused. Never call it from the engine's own event loop.
        """
        loop = self._loop
        if loop is None or not self.is_running:
            raise EngineNotRunning("the engine is not running (starting up or shutting down)")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("submit_blocking called from the engine's own event loop: await submit() instead")
        try:
            future = asyncio.run_coroutine_threadsafe(self._submit_waiting(list(waveforms), frames, origin), loop)
        except RuntimeError as e:  # the loop closed after the check
            raise EngineNotRunning("the engine is shutting down") from e
        return future.result()

    def retry_after(self) -> float:
        """Seconds until the queue has room: queued audio over the measured throughput (≥ 1 s)."""
        queued = sum(r.samples for r in self._pending) / SAMPLE_RATE
        if self._throughput <= 0:
            return 1.0
        return float(max(1, math.ceil(queued / self._throughput)))

    # ---- the queue ----

    def _checked_clip(self, waveform: np.ndarray) -> np.ndarray:
        waveform = np.ascontiguousarray(waveform, dtype=np.float32)
        if waveform.ndim != 1:
            raise InvalidParameterError(f"the engine takes mono clips (samples,), got shape {waveform.shape}")
        self._model.check_length(len(waveform))
        return waveform

    def _check_running(self) -> None:
        if not self.is_running:
            raise EngineNotRunning("the engine is not running (starting up or shutting down)")

    def _enqueue(self, waveform: np.ndarray, frames: bool, finish: Callable[[ClipOutput], Any],
                 origin: str) -> asyncio.Future:
        request = Request(waveform, frames, finish, self._loop.create_future(), origin)
        self._pending.append(request)
        self.stats.submitted += 1
        self._wakeup.set()
        return request.future

    async def _submit_waiting(self, waveforms: list[np.ndarray], frames: bool, origin: str) -> list[ClipOutput]:
        """`submit_blocking` on the engine's loop: each clip waits for room, then all are awaited together."""
        clips = [self._checked_clip(w) for w in waveforms]
        finish = functools.partial(model_outputs, frames=frames)
        futures: list[asyncio.Future] = []
        try:
            for clip in clips:
                await self._wait_for_room()
                futures.append(self._enqueue(clip, frames, finish, origin))
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:  # cancelled, or the engine stopped while waiting: queued clips are dropped
            for future in futures:
                future.cancel()
            raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    async def _wait_for_room(self) -> None:
        while True:
            self._check_running()
            if len(self._pending) < self.max_queue:
                return
            self._room.clear()
            await self._room.wait()

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
            self._room.set()
            return []
        chosen = select_batch([r.samples for r in live], 0, self.max_batch_size, self.max_batch_samples,
                              self.max_padding)
        taken = {id(live[i]) for i in chosen}
        self._pending = deque(r for r in live if id(r) not in taken)
        self._room.set()
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
                     queue_wait, splits, tuple(r.origin for r in batch))

    def _compute(self, batch: list[Request]) -> tuple[list[Any], int]:
        """predict, halving on out-of-memory, then each caller's answer; runs on the compute thread."""
        frames = any(r.frames for r in batch)
        outputs, splits = self._predict_splitting([r.waveform for r in batch], frames)
        outcomes = [out if isinstance(out, BaseException) else request.finish(out)
                    for request, out in zip(batch, outputs, strict=True)]
        return outcomes, splits

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

    def _record(self, lengths: list[int], failed: int, compute_s: float, queue_wait_s: float, splits: int,
                origins: tuple[str, ...]) -> None:
        """Totals and observers, on the event loop's thread."""
        stats = BatchStats(size=len(lengths), real_samples=sum(lengths), padded_samples=len(lengths) * max(lengths),
                           compute_s=compute_s, queue_wait_s=queue_wait_s, splits=splits, origins=origins)
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


async def decode_on(pool: concurrent.futures.Executor | None, source: AudioSource, *, min_samples: int,
                    sample_rate: int | None = None, max_seconds: float | None = None, max_bytes: int | None = None,
                    split: bool = False) -> np.ndarray:
    """`Engine.decode` on a decode pool (a remote engine's too): mono, or (channels, samples) when `split`."""
    if pool is None:
        raise EngineNotRunning("the engine is not started")
    call = functools.partial(decode_channels if split else decode_audio, source, sample_rate=sample_rate,
                             max_seconds=max_seconds, max_bytes=max_bytes, min_samples=min_samples)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def model_outputs(out: ClipOutput, frames: bool) -> ClipOutput:
    """A `submit_blocking` caller's answer: the model's output, with frames only when asked for.

    A clip batched with frame requests was computed with frames too; dropping them keeps each
    answer the same whatever company its clip had.
    """
    return out if frames else replace(out, frame_features=None, frame_probs=None)


class EngineThread:
    """An engine running on an event loop of its own thread, for programs without one (`LocalClient`, scripts).

        with EngineThread(Engine(model)) as engine:
            outputs = engine.submit_blocking([waveform])
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="emoserve-engine-loop", daemon=True)

    def start(self) -> Engine:
        """Start the loop's thread and the engine on it (warm-up included); return the engine."""
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.engine.start(), self.loop).result()
        except BaseException:
            self.end_loop()
            raise
        return self.engine

    def stop(self, drain: bool = True) -> None:
        """Stop the engine (finishing its queue when `drain`), then the loop and its thread."""
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.engine.stop(drain=drain), self.loop).result()
        finally:
            self.end_loop()

    def end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
