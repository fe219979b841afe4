"""Voice activity: silero-vad's speech probabilities, and silero's rules that turn them into stretches.

Two parts, used alike by long files (`longform`) and live streams (`streaming`):

- `SpeechDetector` scores audio block by block with silero-vad's ONNX sequence model (through
  onnxruntime: no torchaudio). The LSTM state carries over between blocks, so the probabilities
  equal one pass over the whole audio, however it was cut.
- `SpeechSegmenter` is silero's `get_speech_timestamps_from_probs` state machine (threshold with
  hysteresis, minimum speech and silence, too-long stretches cut at their longest pause, padding)
  fed one probability at a time: a stream learns a stretch is over as soon as its trailing silence
  is long enough. A whole file is the same machine run to its end (`speech_regions`), so a stream
  and a long-audio job find the same stretches in the same audio. The tests compare it with
  silero's own function on random probabilities.
"""

from __future__ import annotations

import functools
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..config import LongformConfig
from ..model.config import SAMPLE_RATE
from .framing import Cut

MIN_SILENCE_AT_MAX_SPEECH_MS = 98  # silero's default: the shortest pause a too-long stretch may be cut at


@dataclass(frozen=True)
class VadOptions:
    """silero's segmentation rules (the names of `get_speech_timestamps`' arguments, in our units)."""

    threshold: float
    min_speech_ms: int
    min_silence_ms: int
    speech_pad_ms: int
    max_speech_s: float  # longer stretches are cut at their longest pause

    @classmethod
    def of(cls, longform: LongformConfig) -> VadOptions:
        """The rules of a long-audio config: its VAD section, stretches cut to its longest segment."""
        vad = longform.vad
        return cls(threshold=vad.threshold, min_speech_ms=vad.min_speech_ms, min_silence_ms=vad.min_silence_ms,
                   speech_pad_ms=vad.speech_pad_ms, max_speech_s=longform.max_segment_s)


# ---- speech probabilities: silero-vad ----


@functools.cache
def silero_sequence_model():
    """silero-vad's ONNX sequence model (one call scores up to 512 blocks); loaded once per process.

    Importing silero_vad sets torch to one thread for the importing thread, which would halve the
    emotion model's speed on that thread: the thread count is put back.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # silero's use of importlib.resources.path
            from silero_vad import load_silero_vad

            return load_silero_vad(sequence=True)
    finally:
        torch.set_num_threads(threads)


class SpeechDetector:
    """silero-vad fed block by block: speech probability for every 512 samples (32 ms).

    The LSTM state and the 64-sample context of the previous 512-sample frame carry over between
    calls, exactly as silero's own streaming and sequence front-ends do it.
    """

    FRAME = 512
    CONTEXT = 64
    FRAMES_PER_CALL = 512

    def __init__(self):
        self.session = silero_sequence_model().session
        self.hidden = np.zeros((1, 1, 128), np.float32)
        self.cell = np.zeros((1, 1, 128), np.float32)
        self.context = np.zeros(self.CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.probs: list[np.ndarray] = []

    def feed(self, samples: np.ndarray) -> None:
        """Score every whole 512-sample frame; the part of a frame at the end waits for the next block.

        Only that part is copied, so a long block costs no more memory than it holds.
        """
        samples = np.asarray(samples, np.float32)
        if len(self.pending):
            fill = self.FRAME - len(self.pending)
            self.pending = np.concatenate([self.pending, samples[:fill]])
            samples = samples[fill:]
            if len(self.pending) < self.FRAME:
                return
            self.score(self.pending)
        usable = len(samples) // self.FRAME * self.FRAME
        if usable:
            self.score(samples[:usable])
        self.pending = samples[usable:].copy()

    def finish(self) -> np.ndarray:
        """Score the part-frame left at the end (zero-padded), and return what `take` would."""
        if len(self.pending):
            self.score(np.pad(self.pending, (0, self.FRAME - len(self.pending))))
            self.pending = np.zeros(0, np.float32)
        return self.take()

    def take(self) -> np.ndarray:
        """The probabilities scored since the last take (all of them, for a file): a stream reads them as it goes."""
        probs = np.concatenate(self.probs) if self.probs else np.zeros(0, np.float32)
        self.probs = []
        return probs

    def score(self, samples: np.ndarray) -> None:
        frames = samples.reshape(-1, self.FRAME)
        for first in range(0, len(frames), self.FRAMES_PER_CALL):
            block = frames[first: first + self.FRAMES_PER_CALL]
            contexts = np.concatenate([self.context[None], block[:-1, -self.CONTEXT:]])
            values, self.hidden, self.cell = self.session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": self.hidden, "c": self.cell})
            self.probs.append(np.asarray(values, np.float32).reshape(-1))
            self.context = block[-1, -self.CONTEXT:].copy()


# ---- stretches: silero's rules, one probability at a time ----


def speech_regions(probs: np.ndarray, num_samples: int, options: VadOptions) -> list[Cut]:
    """The stretches of speech (padded) in audio of `num_samples` samples: the segmenter run to the end."""
    return SpeechSegmenter(options).finish(probs, num_samples)


@dataclass
class Stretch:
    start: int  # raw start: the first speech block
    end: int  # raw end: where the silence began (or the cut)
    padded_start: int


class SpeechSegmenter:
    """silero-vad's `get_speech_timestamps_from_probs`, made incremental.

    silero's function sees the whole audio; a stream must know a stretch is over as soon as the
    silence after it is long enough. This runs the same state machine (threshold with hysteresis,
    minimum speech and silence, cuts of too-long stretches at their longest pause) one 512-sample
    probability at a time, and pads each stretch as silero does once its neighbour is known, so
    the stretches equal silero's over the whole audio. The equality holds for audio of
    `num_samples` with one probability per started 512-sample block (what `SpeechDetector` gives):
    then no stretch but the last can reach the end, and silero's clamp of every end to the length
    changes nothing but the last one's, which `finish` clamps too.
    """

    def __init__(self, options: VadOptions):
        frame = SpeechDetector.FRAME
        self.threshold = options.threshold
        self.neg_threshold = max(options.threshold - 0.15, 0.01)
        self.min_speech = SAMPLE_RATE * options.min_speech_ms / 1000
        self.min_silence = SAMPLE_RATE * options.min_silence_ms / 1000
        self.pad = SAMPLE_RATE * options.speech_pad_ms / 1000
        self.max_speech = SAMPLE_RATE * options.max_speech_s - frame - 2 * self.pad
        self.min_silence_at_max_speech = SAMPLE_RATE * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
        self.position = 0  # sample of the next probability's block
        self.start: int | None = None  # of the stretch in progress (silero's `triggered`)
        self.temp_end = 0  # where the current silence began, inside a stretch
        self.possible_ends: list[tuple[int, int]] = []  # pauses inside the stretch: (start, length)
        self.closed: deque[Stretch] = deque()  # ended, waiting for their padding

    def push(self, probs: np.ndarray) -> list[Cut]:
        """Take the probabilities of the next blocks; return the stretches (padded) that are now final."""
        self.steps(probs)
        return self.resolve()

    def finish(self, probs: np.ndarray, num_samples: int) -> list[Cut]:
        """The last probabilities; the audio is over after `num_samples`: return every stretch left."""
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

    def resolve(self, num_samples: int | None = None) -> list[Cut]:
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
