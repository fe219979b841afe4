"""Audio for tests, generated on the fly: sine sweeps, noise, speech from espeak-ng when installed."""

from __future__ import annotations

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
