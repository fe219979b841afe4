"""The public calls: any audio → 16 kHz mono float32 in [-1, 1] (`decode_audio`, `stream_audio`), and back to WAV."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ..model.config import SAMPLE_RATE
from .inputs import AudioSource, open_input
from .readers import decode_encoded
from .refusals import check_length
from .sink import BlockConsumer, Resampler, array_channels, to_mono


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
    samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)  # one block: no copy
    if streamed.gain != 1.0:
        samples *= np.float32(streamed.gain)
        np.clip(samples, -1.0, 1.0, out=samples)  # the float32 rounding of the gain
    return samples


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
