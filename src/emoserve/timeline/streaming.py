"""Real-time analysis of one audio stream: PCM16 in, frame and utterance messages out (no sockets here).

The WebSocket route (`api/routes_stream.py`) only moves bytes and JSON; everything a stream
decides lives here, so it can be tested without a socket:

- **frames**: the stream is cut into windows of `window` samples every `hop` samples, exactly the
  windows of a long file (`longform`): starts on multiples of 320 so window frame j is stream frame
  start/320 + j, and each window keeps the frames up to the middle of its overlap with the next
  (`longform.overlap_middle`). Those frames are final the moment their window is analysed; at
  the end a last window flush with the end of the stream hands out the rest.
- **utterances**: silero-vad scores the same audio block by block (`longform.SpeechDetector`);
  `SpeechSegmenter` applies silero's segmentation rules one probability at a time, so a stretch
  is known the moment its trailing silence is long enough, and the stretches are exactly those a
  long-audio job finds in the same audio. Each goes through the model alone (≤ 30 s; longer ones split).

Two workers per stream (frames, utterances) pull audio from their own inbox; the audio waiting in
them is the stream's backlog, which the route keeps under `max_buffer_s` by not reading more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from .. import wire
from ..errors import AudioError, EmoserveError, InvalidParameterError, PayloadTooLargeError
from ..inference.engine import Engine, EngineOverloaded
from ..inference.results import EmotionResult
from ..model.config import FRAME_RATE, HOP, SAMPLE_RATE
from .longform import (
    LongformOptions,
    SpeechDetector,
    fit_length,
    frame_count,
    last_window_start,
    overlap_middle,
    split_long,
)

Send = Callable[[dict], Awaitable[None]]

MAX_RETRY_WAIT_S = 5.0  # an overloaded engine's retry-after is honoured up to this, then the work is retried
MIN_SILENCE_AT_MAX_SPEECH_MS = 98  # silero's default: the shortest pause a too-long stretch may be cut at


@dataclass(frozen=True)
class StreamOptions:
    """How a stream is analysed; defaults match `Settings`, `from_settings` reads them."""

    window_s: float = 4.0
    hop_s: float = 1.0
    max_buffer_s: float = 30.0
    max_duration_s: float = 4 * 3600
    segments: LongformOptions = field(default_factory=LongformOptions)  # VAD and segment limits of long-audio jobs

    def __post_init__(self) -> None:
        if not HOP <= self.hop_samples <= self.window_samples // 2:
            raise InvalidParameterError(f"stream hop_s must be between 0.02 s and half the window ({self.window_s} s), "
                                        f"so every frame has context on both sides; got {self.hop_s}")
        if self.max_buffer_samples < self.hop_samples or self.max_duration_s <= 0:
            raise InvalidParameterError("stream max_buffer_s must be at least the hop (a hop of audio waits for its "
                                        "window) and max_duration_s positive")

    @classmethod
    def from_settings(cls, settings) -> StreamOptions:
        return cls(window_s=settings.stream_window_s, hop_s=settings.stream_hop_s,
                   max_buffer_s=settings.stream_max_buffer_s, max_duration_s=settings.stream_max_duration_s,
                   segments=LongformOptions.from_settings(settings))

    @property
    def window_samples(self) -> int:
        return round(self.window_s * SAMPLE_RATE / HOP) * HOP

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * SAMPLE_RATE / HOP) * HOP

    @property
    def max_buffer_samples(self) -> int:
        return int(self.max_buffer_s * SAMPLE_RATE)

    @property
    def max_duration_samples(self) -> int:
        return int(self.max_duration_s * SAMPLE_RATE)


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


# ---- utterances: silero's segmentation, one probability at a time ----


@dataclass
class Stretch:
    start: int  # raw start: the first speech block
    end: int  # raw end: where the silence began (or the cut)
    padded_start: int


class SpeechSegmenter:
    """silero-vad's `get_speech_timestamps_from_probs`, as `longform.speech_regions` calls it, made incremental.

    silero's function sees the whole file; a stream must know a stretch is over as soon as the
    silence after it is long enough. This runs the same state machine (threshold with hysteresis,
    minimum speech and silence, cuts of too-long stretches at their longest pause) one 512-sample
    probability at a time, and pads each stretch as silero does once its neighbour is known, so
    the stretches equal silero's over the whole stream (the tests compare them on random inputs).
    """

    def __init__(self, options: LongformOptions):
        frame = SpeechDetector.FRAME
        self.threshold = options.vad_threshold
        self.neg_threshold = max(options.vad_threshold - 0.15, 0.01)
        self.min_speech = SAMPLE_RATE * options.vad_min_speech_ms / 1000
        self.min_silence = SAMPLE_RATE * options.vad_min_silence_ms / 1000
        self.pad = SAMPLE_RATE * options.vad_speech_pad_ms / 1000
        self.max_speech = SAMPLE_RATE * options.max_segment_s - frame - 2 * self.pad
        self.min_silence_at_max_speech = SAMPLE_RATE * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
        self.position = 0  # stream sample of the next probability's block
        self.start: int | None = None  # of the stretch in progress (silero's `triggered`)
        self.temp_end = 0  # where the current silence began, inside a stretch
        self.possible_ends: list[tuple[int, int]] = []  # pauses inside the stretch: (start, length)
        self.closed: deque[Stretch] = deque()  # ended, waiting for their padding

    def push(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """Take the probabilities of the next blocks; return the stretches (padded) that are now final."""
        self.steps(probs)
        return self.resolve()

    def finish(self, probs: np.ndarray, num_samples: int) -> list[tuple[int, int]]:
        """The last probabilities; the stream is over after `num_samples`: return every stretch left."""
        self.steps(probs)
        if self.start is not None and num_samples - self.start > self.min_speech:
            self.close(self.start, num_samples)
        self.start = None
        return self.resolve(num_samples)

    def horizon(self) -> int:
        """No stretch still to come starts before this sample."""
        starts = [s.start for s in self.closed] + [self.position] + ([self.start] if self.start is not None else [])
        return max(0, int(min(starts) - self.pad))

    def steps(self, probs: np.ndarray) -> None:
        for prob in np.asarray(probs, np.float32).tolist():  # the float64 values silero's loop compares
            self.step(prob)
            self.position += SpeechDetector.FRAME

    def step(self, prob: float) -> None:
        now = self.position
        if prob >= self.threshold and self.temp_end:
            if now - self.temp_end > self.min_silence_at_max_speech:
                self.possible_ends.append((self.temp_end, now - self.temp_end))
            self.temp_end = 0
        if prob >= self.threshold and self.start is None:
            self.start = now
            return
        if self.start is not None and now - self.start > self.max_speech:
            if self.possible_ends:
                end, pause = max(self.possible_ends, key=lambda e: e[1])
                self.close(self.start, end)
                self.start = end + pause if end + pause < end + now else None
            else:
                self.close(self.start, now)
                self.start = None
                self.temp_end, self.possible_ends = 0, []
                return
            self.temp_end, self.possible_ends = 0, []
        if prob < self.neg_threshold and self.start is not None:
            if not self.temp_end:
                self.temp_end = now
            if now - self.temp_end < self.min_silence:
                return
            if self.temp_end - self.start > self.min_speech:
                self.close(self.start, self.temp_end)
            self.start = None
            self.temp_end, self.possible_ends = 0, []

    def close(self, start: int, end: int) -> None:
        self.closed.append(Stretch(start, end, int(max(0, start - self.pad))))

    def resolve(self, num_samples: int | None = None) -> list[tuple[int, int]]:
        """Pad the closed stretches whose next neighbour is known (or cannot come within two pads)."""
        out = []
        while self.closed:
            stretch = self.closed[0]
            if len(self.closed) > 1:
                after = self.closed[1]
                gap = after.start - stretch.end
                if gap < 2 * self.pad:
                    end = stretch.end + gap // 2
                    after.padded_start = int(max(0, after.start - gap // 2))
                else:
                    end = int(stretch.end + self.pad)
            elif num_samples is not None:
                end = int(min(num_samples, stretch.end + self.pad))
            elif (self.start if self.start is not None else self.position) - stretch.end >= 2 * self.pad:
                end = int(stretch.end + self.pad)
            else:
                break
            out.append((stretch.padded_start, end))
            self.closed.popleft()
        return out


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

    def __init__(self, options: LongformOptions, min_samples: int):
        self.options, self.min_samples = options, min_samples
        self.detector = SpeechDetector()
        self.segmenter = SpeechSegmenter(options)
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
        parts = split_long(stretches, self.options.max_segment_s)
        cuts = [fit_length(part, self.min_samples, self.audio.end) for part in parts]
        voiced = [Voiced(start, self.audio.slice(start, end)) for start, end in cuts]
        self.audio.drop_before(self.segmenter.horizon() - self.min_samples)
        return voiced


# ---- the messages: `emoserve.wire.StreamMessage` (docs/API.md, "Streaming") ----


def frames_message(first_frame: int, scores: np.ndarray) -> dict:
    return wire.FramesMessage.model_construct(type="frames", start=round(first_frame / FRAME_RATE, 6),
                                              scores=scores.tolist()).to_dict()


def utterance_message(voiced: Voiced, result: EmotionResult) -> dict:
    return wire.UtteranceMessage(type="utterance", start=round(voiced.start / SAMPLE_RATE, 6),
                                 end=round(voiced.end / SAMPLE_RATE, 6), emotion=result.emotion,
                                 confidence=result.confidence, scores=result.utterance_scores).to_dict()


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

    def __init__(self, engine: Engine, options: StreamOptions, send: Send):
        self.engine, self.options, self.send = engine, options, send
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
        tracker = await asyncio.to_thread(UtteranceTracker, self.options.segments,
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
                return await self.engine.submit(samples, granularity=granularity)
            except EngineOverloaded as error:
                await self.send(error_message(error))
                await asyncio.sleep(min(error.retry_after, MAX_RETRY_WAIT_S))
