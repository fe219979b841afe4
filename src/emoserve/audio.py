"""Any audio users send → the model's input: 16 kHz mono float32 in [-1, 1], or a typed refusal.

soundfile (libsndfile) reads WAV/FLAC/OGG quickly; PyAV (FFmpeg) decodes the rest (MP3, AAC,
Opus, WebM, ...). soxr resamples. Every refusal is an `AudioError` whose `code` is the API's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

SAMPLE_RATE = 16_000

AudioSource = Union[bytes, bytearray, memoryview, str, Path, BinaryIO, np.ndarray]


def decode_audio(source: AudioSource, *, sample_rate: int | None = None) -> np.ndarray:
    """Decode and resample to 16 kHz mono float32.

    `sample_rate` is the rate of a numpy array (default 16 kHz); files carry their own.
    """
    if isinstance(source, np.ndarray):
        return from_array(source, sample_rate or SAMPLE_RATE)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("the audio is empty (0 bytes)", code="empty_audio")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"no such audio file: {path}", code="empty_audio")
        if path.stat().st_size == 0:
            raise AudioError(f"{path} is empty (0 bytes)", code="empty_audio")
    samples, rate = read_any(source)
    return from_array(samples, rate)


def read_any(source) -> tuple[np.ndarray, int]:
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
        return samples, rate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    if hasattr(source, "seek"):
        source.seek(0)
    return read_with_pyav(source)


def read_with_pyav(source) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(source if not isinstance(source, Path) else str(source), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("the file has no audio stream", code="unsupported_format")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono")
            chunks = []
            rate = None
            for frame in container.decode(stream):
                rate = frame.sample_rate
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except av.error.InvalidDataError as e:
        raise AudioError(f"the audio could not be decoded: {e}", code="unsupported_format") from e
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise AudioError(f"the audio is corrupt or truncated: {e}", code="corrupt_audio") from e
    if rate is None or not chunks:
        raise AudioError("the audio has no samples", code="empty_audio")
    return np.concatenate(chunks)[:, None], rate


def from_array(samples: np.ndarray, rate: int) -> np.ndarray:
    """Validate, mix to mono and resample an array of samples (N,) or (N, channels)."""
    if not 1_000 <= rate <= 384_000:
        raise AudioError(f"sample rate {rate} Hz is out of range (1 kHz–384 kHz)", code="unsupported_format")
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if samples.ndim != 1:
        raise AudioError(f"audio array must be (samples,) or (samples, channels), got {samples.shape}",
                         code="unsupported_format")
    if samples.size == 0:
        raise AudioError("the audio has no samples", code="empty_audio")
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise AudioError("the audio contains NaN or infinite samples", code="corrupt_audio")
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(samples)


def processed_wav(samples: np.ndarray) -> bytes:
    """The 16 kHz mono PCM16 WAV of what the model heard."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
