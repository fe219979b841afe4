"""Samples → the model's rate: channels mixed to mono, the duration limit checked as blocks arrive, soxr HQ
resampling as a stream; every decoder hands its blocks to `Resampler` (mixed), or to `ChannelSplitter`
(each channel kept, and resampled exactly as it would be alone in a mono file)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import soxr

from ..errors import AudioError
from ..model.config import SAMPLE_RATE
from .refusals import MAX_CHANNELS, check_channels, check_rate, too_long, unsupported

BlockConsumer = Callable[[np.ndarray, int | None], None]  # (16 kHz block, samples expected in all or None)

RESAMPLE_FRAMES = 1 << 16  # mono frames gathered before each soxr call: fewer calls, same output


def array_channels(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The array and its channel axis; the channel axis is the short one ((channels, samples) from torchaudio)."""
    if samples.dtype.kind not in "fiu":
        raise AudioError(f"audio arrays hold numbers; got dtype {samples.dtype}", code="unsupported_format")
    if samples.ndim == 1:
        return samples[:, None], 1
    if samples.ndim != 2:
        raise AudioError(f"audio arrays are (samples,), (samples, channels) or (channels, samples); "
                         f"got shape {samples.shape}", code="unsupported_format")
    if samples.shape[1] > MAX_CHANNELS >= samples.shape[0]:
        return samples, 0
    return samples, 1


def to_mono(samples: np.ndarray, channel_axis: int) -> np.ndarray:
    """Float32 mean of the channels of a 2-D array; integers scaled to [-1, 1); NaN/Inf refused."""
    check_channels(samples.shape[channel_axis])
    return mix(samples.T if channel_axis == 1 else samples, samples.dtype)


def mix(rows: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The mean of equally long channel rows as new float32 samples; the rows are not modified."""
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are refused just below
            mono = rows[0].astype(np.float32)
            for row in rows[1:]:
                mono += row
        if not np.isfinite(mono).all():
            raise AudioError("the audio contains NaN or infinite samples: send finite audio", code="corrupt_audio")
        if len(rows) > 1:
            mono *= np.float32(1 / len(rows))
        return mono
    scale = np.float32(1 / (len(rows) * 2.0 ** (dtype.itemsize * 8 - 1)))
    mono = np.multiply(rows[0], scale, dtype=np.float32)  # one pass: integers in, scaled float32 out
    for row in rows[1:]:
        mono += np.multiply(row, scale, dtype=np.float32)
    if dtype.kind == "u":
        mono -= np.float32(1.0)  # unsigned samples centre on half their range
    return mono


class DurationLimit(ABC):
    """The duration limit, checked as frames arrive; `seconds` is what has arrived."""

    max_seconds: float | None

    @property
    @abstractmethod
    def seconds(self) -> float:
        """Seconds of audio received so far."""

    def frames_left(self, rate: int) -> int | None:
        """Frames at `rate` that still fit under the limit (None: no limit), so readers ask for no more."""
        if self.max_seconds is None:
            return None
        return max(0, round((self.max_seconds - self.seconds) * rate))

    def check_room(self, frames: int, rate: int) -> None:
        """Refuse before decoding when the length is known up front (a WAV header)."""
        if self.max_seconds is not None and self.seconds + frames / rate > self.max_seconds + 0.5 / rate:
            raise too_long(self.max_seconds)


class Resampler(DurationLimit):
    """Mono blocks at their source rate in, 16 kHz blocks out to a consumer; the duration limit is checked as
    blocks arrive.

    A source rate may change mid-stream (chained Ogg, odd MP3s): each run of one rate is resampled
    on its own and the runs follow each other.
    """

    def __init__(self, max_seconds: float | None, on_block: BlockConsumer):
        self.max_seconds = max_seconds
        self.on_block = on_block
        self.done_seconds = 0.0  # of the runs already finished
        self.rate = 0
        self.frames = 0  # in the current run
        self.stream: soxr.ResampleStream | None = None
        self.pending: list[np.ndarray] = []
        self.pending_frames = 0
        self.in_range = True  # integer samples, not resampled: within [-1, 1) by construction
        self.peak = 0.0  # of the blocks handed out since the audio may pass full scale
        self.num_samples = 0  # handed out
        self.expected_samples: int | None = None

    def expect(self, seconds: float) -> None:
        """The length the container announces, passed on with every block for progress."""
        self.expected_samples = round(seconds * SAMPLE_RATE) if seconds > 0 else None

    @property
    def seconds(self) -> float:
        return self.done_seconds + (self.frames / self.rate if self.rate else 0.0)

    def add_frames(self, samples: np.ndarray, channel_axis: int, rate: int, from_integers: bool) -> None:
        """A 2-D block of all channels (readers' interleaved frames), mixed to mono."""
        self.add(to_mono(samples, channel_axis), rate, from_integers)

    def add_rows(self, rows: Sequence[np.ndarray], rate: int, from_integers: bool) -> None:
        """One equally long row per channel (planar frames), mixed to mono."""
        check_channels(len(rows))
        self.add(mix(rows, rows[0].dtype), rate, from_integers)

    def add(self, mono: np.ndarray, rate: int, from_integers: bool) -> None:
        """`from_integers`: mixed from integer samples, so within [-1, 1) until resampled."""
        self.in_range &= from_integers and rate == SAMPLE_RATE
        if rate != self.rate:
            check_rate(rate)
            self.end_run()
            self.rate = rate
            self.stream = None if rate == SAMPLE_RATE else \
                soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.check_room(len(mono), rate)
        self.frames += len(mono)
        self.pending.append(mono)
        self.pending_frames += len(mono)
        if self.pending_frames >= RESAMPLE_FRAMES:
            self.flush(last=False)

    def flush(self, last: bool) -> None:
        """Resample what is pending; `last` also drains soxr's delay line, which needs a call even when empty."""
        if not self.pending and (self.stream is None or not last):
            return
        block = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending or [np.zeros(0, np.float32)])
        self.pending, self.pending_frames = [], 0
        resampled = block if self.stream is None else self.stream.resample_chunk(block, last=last)
        if len(resampled):
            self.emit(resampled)

    def emit(self, block: np.ndarray) -> None:
        if not self.in_range:
            peak = max(float(block.max()), -float(block.min()))
            if not math.isfinite(peak):  # finite float samples near 3e38 that resampling pushed over
                raise AudioError("the audio's sample values are far out of range: send normal audio",
                                 code="corrupt_audio")
            self.peak = max(self.peak, peak)
        self.num_samples += len(block)
        self.on_block(block, self.expected_samples)

    def end_run(self) -> None:
        if self.rate:
            self.flush(last=True)
            self.done_seconds += self.frames / self.rate
        self.frames = 0

    @property
    def has_audio(self) -> bool:
        return self.frames > 0 or self.done_seconds > 0

    def finish(self) -> None:
        self.end_run()

    @property
    def gain(self) -> float:
        """What brings audio louder than full scale down to a peak of 1.0: scaled, not clipped, since clipping
        distorts and the model normalises each clip anyway."""
        return 1 / self.peak if self.peak > 1.0 else 1.0


class ChannelSplitter(DurationLimit):
    """Blocks of all channels in, one `Resampler` per channel: channel k goes through the very steps (scaling,
    resampling, gain) it would go through alone in a mono file, so its samples are that file's samples.

    `consumer_for(k)` gives the consumer of channel k's 16 kHz blocks; the channels are made at the first block.
    """

    def __init__(self, max_seconds: float | None, consumer_for: Callable[[int], BlockConsumer]):
        self.max_seconds = max_seconds
        self.consumer_for = consumer_for
        self.channels: list[Resampler] = []
        self.expected_seconds = 0.0

    @property
    def lead(self) -> Resampler | None:
        """Channel 0: every channel has had the same frames, so it answers for all."""
        return self.channels[0] if self.channels else None

    @property
    def seconds(self) -> float:
        return self.lead.seconds if self.lead else 0.0

    @property
    def frames(self) -> int:
        return self.lead.frames if self.lead else 0

    @property
    def has_audio(self) -> bool:
        return self.lead is not None and self.lead.has_audio

    @property
    def num_samples(self) -> int:
        return self.lead.num_samples if self.lead else 0

    @property
    def gains(self) -> list[float]:
        return [channel.gain for channel in self.channels]

    def expect(self, seconds: float) -> None:
        self.expected_seconds = seconds
        for channel in self.channels:
            channel.expect(seconds)

    def add_frames(self, samples: np.ndarray, channel_axis: int, rate: int, from_integers: bool) -> None:
        check_channels(samples.shape[channel_axis])
        self.add_rows(samples.T if channel_axis == 1 else samples, rate, from_integers)

    def add_rows(self, rows: Sequence[np.ndarray], rate: int, from_integers: bool) -> None:
        check_channels(len(rows))
        if not self.channels:
            self.channels = [Resampler(self.max_seconds, self.consumer_for(k)) for k in range(len(rows))]
            self.expect(self.expected_seconds)
        if len(rows) != len(self.channels):
            raise unsupported(f"the number of channels changes midway, from {len(self.channels)} to {len(rows)}")
        for channel, row in zip(self.channels, rows, strict=True):
            channel.add(mix([row], row.dtype), rate, from_integers)

    def finish(self) -> None:
        for channel in self.channels:
            channel.finish()
