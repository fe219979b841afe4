"""Real-time analysis of one audio stream: PCM16 in, frame and utterance messages out (no sockets here).

The WebSocket route (`api/routes/stream.py`) only moves bytes and JSON; everything a stream
decides lives here, so it can be tested without a socket:

- **frames**: the stream is cut into windows of `window` samples every `hop` samples on the 20 ms
  grid of long files (`framing`): starts on multiples of 320 so window frame j is stream frame
  start/320 + j, and each window keeps the frames up to the middle of its overlap with the next
  (`framing.overlap_middle`). Those frames are final the moment their window is analysed; at
  the end a last window flush with the end of the stream hands out the rest.
- **utterances**: silero-vad scores the same audio block by block (`vad.SpeechDetector`), and
  `vad.SpeechSegmenter` applies silero's segmentation rules one probability at a time, so a
  stretch is known the moment its trailing silence is long enough; a long-audio job runs the same
  machine to the end of its file, so the stretches are exactly those it finds in the same audio.
  Each goes through the model alone (≤ 30 s; longer ones split).

Two workers per stream (frames, utterances) pull audio from their own inbox; the audio waiting in
them is the stream's backlog, which the route keeps under `max_buffer_s` by not reading more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from .. import wire
from ..config import LongformConfig, StreamConfig
from ..errors import AudioError, EmoserveError, PayloadTooLargeError
from ..inference.engine import Engine, EngineOverloaded
from ..inference.results import EmotionResult
from ..model.config import HOP, SAMPLE_RATE
from .framing import (
    frame_count,
    frame_time,
    last_window_start,
    model_cuts,
    overlap_middle,
    to_seconds,
)
from .vad import SpeechDetector, SpeechSegmenter, VadOptions

Send = Callable[[dict], Awaitable[None]]

MAX_RETRY_WAIT_S = 5.0  # an overloaded engine's retry-after is honoured up to this, then the work is retried


# ---- bytes → samples ----


class PcmDecoder:
    """Little-endian PCM16 → float32 in [-1, 1), as decoding a PCM16 WAV gives; a message may end mid-sample."""

    def __init__(self) -> None:
        self.carry = b""

    def decode(self, data: bytes) -> np.ndarray:
        if self.carry:
            data = self.carry + data
        usable = len(data) - len(data) % 2
        self.carry = data[usable:]
        return np.frombuffer(data, "<i2", count=usable // 2).astype(np.float32) / 32768.0


class SampleBuffer:
    """The recent part of a stream, addressed by the stream's sample index; older samples are dropped."""

    def __init__(self) -> None:
        self.blocks: deque[np.ndarray] = deque()
        self.start = 0  # stream index of the first sample held
        self.end = 0  # stream index after the last sample received

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self.blocks.append(samples)
            self.end += len(samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        if not self.start <= start <= end <= self.end:
            raise ValueError(f"samples [{start}, {end}) are not held (held: [{self.start}, {self.end}))")
        if len(self.blocks) > 1:
            self.blocks = deque([np.concatenate(self.blocks)])
        held = self.blocks[0] if self.blocks else np.zeros(0, np.float32)
        return held[start - self.start: end - self.start].copy()

    def drop_before(self, index: int) -> None:
        index = min(max(index, self.start), self.end)
        while self.blocks and self.start + len(self.blocks[0]) <= index:
            self.start += len(self.blocks.popleft())
        if self.blocks and index > self.start:
            self.blocks[0] = self.blocks[0][index - self.start:].copy()
            self.start = index


# ---- frames: overlapping windows, stitched as long files are ----


@dataclass(frozen=True)
class Window:
    """Samples [start, start + len(samples)) of the stream; it hands out stream frames [first, last)."""

    start: int
    samples: np.ndarray
    first: int
    last: int

    def owned(self, frame_scores: np.ndarray) -> np.ndarray:
        """The rows of the window's frame scores that are stream frames [first, last)."""
        if len(frame_scores) != frame_count(len(self.samples)):
            raise EmoserveError(f"the model made {len(frame_scores)} frames of {len(self.samples)} samples, not "
                                f"{frame_count(len(self.samples))}: streams need floor((N - 400) / 320) + 1")
        offset = self.start // HOP
        return frame_scores[self.first - offset: self.last - offset]


class FrameWindows:
    """Which windows of a growing stream are ready, and which of their frames are final."""

    def __init__(self, window: int, hop: int):
        self.window, self.hop = window, hop
        self.audio = SampleBuffer()
        self.next_start = 0  # of the next regular window
        self.emitted = 0  # stream frames [0, emitted) have been handed out

    def append(self, samples: np.ndarray) -> None:
        self.audio.append(samples)

    def backlog(self) -> int:
        """Samples received beyond the hop that the next window will analyse."""
        return max(0, self.audio.end - (self.next_start + self.window - self.hop))

    def next_window(self) -> Window | None:
        start = self.next_start
        if self.audio.end < start + self.window:
            return None
        return Window(start, self.audio.slice(start, start + self.window), self.emitted,
                      overlap_middle(start, self.window, start + self.hop))

    def last_window(self) -> Window | None:
        """At the end of the stream: the window flush with its end, for the frames not handed out yet."""
        total = frame_count(self.audio.end)
        if total <= self.emitted:
            return None
        start = last_window_start(self.audio.end, self.window)
        return Window(start, self.audio.slice(start, self.audio.end), self.emitted, total)

    def done(self, window: Window) -> None:
        self.emitted = window.last
        if window.start == self.next_start and len(window.samples) == self.window:
            self.next_start += self.hop
            self.audio.drop_before(window.start)  # the last window may start anywhere after it


# ---- utterances: voiced stretches as they close ----


@dataclass(frozen=True)
class Voiced:
    """One voiced segment of the stream, ready for the model."""

    start: int
    samples: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


class UtteranceTracker:
    """The stream's voiced segments as they close: silero-vad → silero's rules → cuts ≤ max_segment_s.

    Blocking (silero runs on the CPU): the session calls it from a worker thread.
    """

    def __init__(self, options: LongformConfig, min_samples: int):
        self.options, self.min_samples = options, min_samples
        self.detector = SpeechDetector()
        self.segmenter = SpeechSegmenter(VadOptions.of(options))
        self.audio = SampleBuffer()

    def feed(self, samples: np.ndarray) -> list[Voiced]:
        self.audio.append(samples)
        self.detector.feed(samples)
        return self.cut(self.segmenter.push(self.detector.take()))

    def finish(self) -> list[Voiced]:
        return self.cut(self.segmenter.finish(self.detector.finish(), self.audio.end))

    def cut(self, stretches: list[tuple[int, int]]) -> list[Voiced]:
        """Split as long-audio jobs split (≤ max_segment_s; at least the model's minimum), with their audio."""
        if self.audio.end < self.min_samples:
            return []
        cuts = model_cuts(stretches, self.options.max_segment_s, self.min_samples, self.audio.end)
        voiced = [Voiced(start, self.audio.slice(start, end)) for start, end in cuts]
        self.audio.drop_before(self.segmenter.horizon() - self.min_samples)
        return voiced


# ---- the messages: `emoserve.wire.StreamMessage` (docs/API.md, "Streaming") ----


def frames_message(first_frame: int, scores: np.ndarray) -> dict:
    return wire.FramesMessage.model_construct(type="frames", start=frame_time(first_frame),
                                              scores=scores.tolist()).to_dict()


def utterance_message(voiced: Voiced, result: EmotionResult) -> dict:
    return wire.UtteranceMessage(type="utterance", start=to_seconds(voiced.start), end=to_seconds(voiced.end),
                                 emotion=result.emotion, confidence=result.confidence,
                                 scores=result.utterance_scores).to_dict()


def error_message(error: EmoserveError) -> dict:
    return wire.StreamError(type="error", code=error.code, message=error.message, **error.details).to_dict()


def end_message() -> dict:
    return wire.StreamEnd(type="end").to_dict()


# ---- one stream ----


class Inbox:
    """Audio received and not yet taken by one worker."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.samples = 0
        self.arrived = asyncio.Event()

    def put(self, samples: np.ndarray) -> None:
        self.blocks.append(samples)
        self.samples += len(samples)
        self.arrived.set()

    def take(self) -> np.ndarray | None:
        if not self.blocks:
            return None
        samples = np.concatenate(self.blocks)
        self.blocks, self.samples = [], 0
        return samples

    async def wait(self) -> None:
        if not self.blocks:
            self.arrived.clear()
            await self.arrived.wait()

    def wake(self) -> None:
        self.arrived.set()


class StreamSession:
    """One stream's analysis. `feed` the binary messages, `end` when the client does; `run` does the work.

    `send` receives each outgoing message (a dict) in order per kind; frames form one continuous
    20 ms grid. `run` returns once `end` was called and every frame and utterance is sent, and
    raises the first failure (an `EmoserveError`, or the error of a failed `send`).
    """

    def __init__(self, engine: Engine, options: StreamConfig, send: Send, segments: LongformConfig | None = None):
        self.engine, self.options, self.send = engine, options, send
        self.segments = segments or LongformConfig()  # VAD and segment limits, those of long-audio jobs
        self.pcm = PcmDecoder()
        self.frames = FrameWindows(options.window_samples, options.hop_samples)
        self.frame_inbox, self.voice_inbox = Inbox(), Inbox()
        self.received = 0
        self.ending = False
        self.room = asyncio.Event()

    @property
    def seconds(self) -> float:
        return self.received / SAMPLE_RATE

    def feed(self, data: bytes) -> None:
        """One binary message. Past the duration limit the audio up to the limit is kept and `AudioError` raised."""
        if len(data) // 2 > self.options.max_buffer_samples:
            raise PayloadTooLargeError(f"a message of {len(data)} bytes is over the stream buffer of "
                                       f"{self.options.max_buffer_s:g} s; send smaller messages",
                                       details={"max_bytes": 2 * self.options.max_buffer_samples})
        samples = self.pcm.decode(data)
        room = self.options.max_duration_samples - self.received
        kept = samples[:room]
        if len(kept):
            self.received += len(kept)
            self.frame_inbox.put(kept)
            self.voice_inbox.put(kept)
        if len(samples) > room:
            raise AudioError(f"the stream is longer than the limit of {self.options.max_duration_s:g} s; the audio "
                             "up to the limit is analysed", code="audio_too_long",
                             details={"max_duration_s": self.options.max_duration_s})

    def backlog(self) -> int:
        """Samples received and not analysed yet (the slower of the two workers)."""
        return max(self.frame_inbox.samples + self.frames.backlog(), self.voice_inbox.samples)

    async def wait_for_room(self) -> None:
        """Return once the backlog is under `max_buffer_s`: the route reads no more audio until then."""
        while self.backlog() > self.options.max_buffer_samples:
            self.room.clear()
            await self.room.wait()

    def end(self) -> None:
        """No more audio: flush the frames and close an open utterance."""
        self.ending = True
        self.frame_inbox.wake()
        self.voice_inbox.wake()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.frames_worker()), asyncio.create_task(self.utterances_worker())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def frames_worker(self) -> None:
        while True:
            window = self.frames.next_window()
            if window is not None:
                await self.send_frames(window)
                continue
            audio = self.frame_inbox.take()
            if audio is not None:
                self.frames.append(audio)
            elif self.ending:
                break
            else:
                await self.frame_inbox.wait()
        window = self.frames.last_window()
        if window is not None:
            await self.send_frames(window)

    async def send_frames(self, window: Window) -> None:
        result = await self.submit(window.samples, "frame")
        scores = window.owned(np.asarray(result.scores))
        self.frames.done(window)
        self.room.set()
        if len(scores):
            await self.send(frames_message(window.first, scores))

    async def utterances_worker(self) -> None:
        tracker = await asyncio.to_thread(UtteranceTracker, self.segments,
                                          self.engine.model.config.min_samples)  # loads silero once per process
        while True:
            audio = self.voice_inbox.take()
            if audio is not None:
                self.room.set()
                for voiced in await asyncio.to_thread(tracker.feed, audio):
                    await self.send_utterance(voiced)
            elif self.ending:
                break
            else:
                await self.voice_inbox.wait()
        for voiced in await asyncio.to_thread(tracker.finish):
            await self.send_utterance(voiced)

    async def send_utterance(self, voiced: Voiced) -> None:
        await self.send(utterance_message(voiced, await self.submit(voiced.samples, "utterance")))

    async def submit(self, samples: np.ndarray, granularity: str) -> EmotionResult:
        """The engine's answer; while its queue is full, say so and retry (no audio of the stream is skipped)."""
        while True:
            try:
                return await self.engine.submit(samples, granularity=granularity, origin="stream")
            except EngineOverloaded as error:
                await self.send(error_message(error))
                await asyncio.sleep(min(error.retry_after, MAX_RETRY_WAIT_S))
