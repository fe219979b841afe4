"""The public calls: any audio → 16 kHz mono float32 in [-1, 1] (`decode_audio`, `stream_audio`), or one such row
per channel (`decode_channels`), and back to WAV."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ..errors import InvalidParameterError
from ..model.config import SAMPLE_RATE
from .inputs import AudioSource, open_input
from .readers import declared_channels, decode_encoded
from .refusals import check_length
from .sink import BlockConsumer, ChannelSplitter, Resampler, array_channels, to_mono


def decode_audio(source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None,
                 max_bytes: int | None = None, min_samples: int | None = None) -> np.ndarray:
    """Decode, mix to mono and resample to 16 kHz float32 in [-1, 1], or raise `AudioError`.

    `sample_rate` is the rate of a numpy array (default 16 kHz); encoded audio carries its own.
    `max_bytes` is checked before decoding, `max_seconds` while decoding, `min_samples` (at 16 kHz)
    at the end. Arrays are (samples,), (samples, channels) or (channels, samples).
    """
    blocks: list[np.ndarray] = []
    streamed = stream_audio(source, lambda block, expected: blocks.append(block), sample_rate=sample_rate,
                            max_seconds=max_seconds, max_bytes=max_bytes, min_samples=min_samples)
    return joined(blocks, streamed.gain)


def joined(blocks: list[np.ndarray], gain: float) -> np.ndarray:
    """One channel's 16 kHz blocks as one array, brought to full scale by `gain` (see `StreamedAudio.gain`)."""
    samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)  # one block: no copy
    if gain != 1.0:
        samples *= np.float32(gain)
        np.clip(samples, -1.0, 1.0, out=samples)  # the float32 rounding of the gain
    return samples


def decode_channels(source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None,
                    max_bytes: int | None = None, min_samples: int | None = None) -> np.ndarray:
    """Decode keeping the channels apart: (channels, samples) float32 at 16 kHz, for analysing each on its own.

    Row k is exactly what `decode_audio` gives for channel k alone as a mono file (same scaling, soxr
    stream and gain), so a channel's analysis does not depend on its neighbours. Audio with one channel is
    refused (`InvalidParameterError`): there is nothing to split. Limits as `decode_audio`.
    """
    rows: list[list[np.ndarray]] = []

    def consumer_for(channel: int) -> BlockConsumer:
        rows.append([])
        return lambda block, expected: rows[channel].append(block)

    streamed = stream_channels(source, consumer_for, sample_rate=sample_rate, max_seconds=max_seconds,
                               max_bytes=max_bytes, min_samples=min_samples)
    return np.stack([joined(blocks, s.gain) for blocks, s in zip(rows, streamed, strict=True)])


def stream_channels(source: AudioSource, consumer_for: Callable[[int], BlockConsumer], *,
                    sample_rate: int | None = None, max_seconds: float | None = None, max_bytes: int | None = None,
                    min_samples: int | None = None) -> list[StreamedAudio]:
    """`stream_audio` with the channels kept apart: channel k's 16 kHz blocks go to `consumer_for(k)` (asked for
    once per channel, at the first block), exactly the blocks `stream_audio` gives for channel k alone as a mono
    file; one `StreamedAudio` per channel. Audio with one channel is refused (`InvalidParameterError`)."""
    sink = ChannelSplitter(max_seconds, consumer_for)
    if isinstance(source, np.ndarray):
        samples, channel_axis = array_channels(source)
        sink.expect(samples.shape[1 - channel_axis] / (sample_rate or SAMPLE_RATE))
        sink.add_frames(samples, channel_axis, sample_rate or SAMPLE_RATE, source.dtype.kind != "f")
    else:
        with open_input(source, max_bytes) as data:
            decode_encoded(data, sink)
    sink.finish()
    check_length(sink.num_samples, min_samples)
    if len(sink.channels) == 1:  # also where a header claimed more channels than the audio holds
        raise one_channel()
    return [StreamedAudio(channel.num_samples, channel.gain) for channel in sink.channels]


def check_splittable(source: AudioSource, *, max_bytes: int | None = None) -> None:
    """Refuse channels=split of audio whose header declares one channel, without decoding it: a long-audio job
    is refused when it is asked for, not minutes later. Audio no header describes passes; decoding checks
    again (`stream_channels`)."""
    if isinstance(source, np.ndarray):
        samples, channel_axis = array_channels(source)
        declared = samples.shape[channel_axis]
    else:
        with open_input(source, max_bytes) as data:
            declared = declared_channels(data)
    if declared == 1:
        raise one_channel()


def one_channel() -> InvalidParameterError:
    return InvalidParameterError("channels=split needs a file with two or more channels; this file has one "
                                 "channel (mono): analyse it with channels=mix")


@dataclass(frozen=True)
class StreamedAudio:
    """What `stream_audio` handed out, once it is all out."""

    num_samples: int  # at 16 kHz, in all blocks
    gain: float  # below 1.0 where the audio went louder than full scale (float sources, resampling overshoot):
    # the factor that brings its peak to 1.0, which `decode_audio` applies; 1.0 for all other audio


def stream_audio(source: AudioSource, on_block: BlockConsumer, *, sample_rate: int | None = None,
                 max_seconds: float | None = None, max_bytes: int | None = None,
                 min_samples: int | None = None) -> StreamedAudio:
    """`decode_audio` as a stream: 16 kHz mono float32 blocks go to `on_block` as they are decoded.

    Memory holds a few blocks of about a million samples at most (a second of frames for
    compressed audio; a numpy array is one block), whatever the length: hours of audio can be
    written out or analysed as they decode. `on_block(block, expected)` gets each new C-contiguous
    block, which it may keep, and the number of samples the container announces for the whole
    audio (for progress; None when unknown; not a promise). An exception it raises stops decoding
    and comes out unchanged. Refusals may come after some blocks were handed out (a limit passed
    or a NaN midway, too short at the end). Blocks are not rescaled: float audio louder than full
    scale goes past [-1, 1] (see `StreamedAudio.gain`).
    """
    sink = Resampler(max_seconds, on_block)
    if isinstance(source, np.ndarray):
        rate = sample_rate or SAMPLE_RATE
        mono = to_mono(*array_channels(source))
        sink.expect(len(mono) / rate)
        sink.add(mono, rate, source.dtype.kind != "f")
    else:
        with open_input(source, max_bytes) as data:
            decode_encoded(data, sink)
    sink.finish()
    check_length(sink.num_samples, min_samples)
    return StreamedAudio(sink.num_samples, sink.gain)


def processed_wav(samples: np.ndarray) -> bytes:
    """The 16 kHz mono PCM16 WAV of what the model heard."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
