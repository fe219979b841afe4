"""Audio for tests, generated on the fly: sine sweeps, noise, speech from espeak-ng when installed."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000


def sweep(seconds: float, rate: int = SAMPLE_RATE, f0: float = 100.0, f1: float = 4000.0,
          amplitude: float = 0.5) -> np.ndarray:
    """A logarithmic sine sweep, float32."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    k = np.log(f1 / f0) / max(seconds, 1e-9)
    return (amplitude * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)).astype(np.float32)


def noise(num_samples: int, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech(text: str = "I am so happy to see you today", rate: int = SAMPLE_RATE) -> np.ndarray:
    """Synthetic speech from espeak-ng, resampled to `rate` (callers skip when espeak-ng is missing)."""
    import soxr

    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    samples, source_rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, source_rate, rate).astype(np.float32)


PHRASES = (
    "I am so happy to see you today",
    "Why would you ever do that to me",
    "Well, maybe tomorrow we can walk to the park",
    "That is the most ridiculous thing I have heard",
)


@functools.cache
def phrase(index: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """One of PHRASES spoken by espeak-ng (cached: long recordings repeat them)."""
    return speech(PHRASES[index % len(PHRASES)], rate)


def conversation(gaps_s: list[float], seed: int = 0, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[tuple]]:
    """espeak-ng phrases separated by silences of `gaps_s` (before each phrase, and one after the last).

    Returns the samples and the (start, end) seconds of each phrase: the voiced regions a VAD should find.
    """
    rng = np.random.default_rng(seed)
    parts, regions, position = [], [], 0
    for i, gap in enumerate(gaps_s):
        silence = np.zeros(int(gap * rate), np.float32)
        parts.append(silence)
        position += len(silence)
        if i == len(gaps_s) - 1:
            break
        voiced = phrase(int(rng.integers(len(PHRASES))), rate)
        parts.append(voiced)
        regions.append((position / rate, (position + len(voiced)) / rate))
        position += len(voiced)
    return np.concatenate(parts), regions


def long_recording(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A call-like recording: espeak-ng phrases with 0.3–2 s pauses, or, without espeak-ng, noise bursts."""
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    out = np.zeros(total, np.float32)
    position = 0
    while (position := position + int(rng.uniform(0.3, 2.0) * rate)) < total:
        if espeak_available():
            voiced = phrase(int(rng.integers(len(PHRASES))), rate)
        else:
            voiced = noise(int(rng.uniform(1.0, 4.0) * rate), seed=int(rng.integers(1 << 30)), amplitude=0.2)
        take = min(len(voiced), total - position)
        out[position: position + take] = voiced[:take]
        position += take
    return out


def encoded(samples: np.ndarray, rate: int = SAMPLE_RATE, container: str = "mp4", codec: str = "aac") -> bytes:
    """Audio in a container soundfile cannot read (AAC in MP4 by default), encoded with PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()
