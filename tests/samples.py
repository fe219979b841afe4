"""Audio for tests, generated on the fly: tones, sweeps, noise, espeak-ng speech, every format via PyAV/libsndfile."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

from emoserve.model.config import SAMPLE_RATE


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
    return soundfile_bytes(samples, rate, "WAV", subtype)


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


def two_speaker_call(rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[list[tuple[float, float]]]]:
    """A stereo call (n, 2): different espeak-ng phrases on the left (at 0.5 s and 7 s) and on the right (at
    3.5 s and 9 s), and the (start, end) seconds of each channel's phrases; callers skip without espeak-ng."""
    placed = [[(0, 0.5), (2, 7.0)], [(1, 3.5), (3, 9.0)]]
    ends = [start + len(phrase(index, rate)) / rate for channel in placed for index, start in channel]
    call = np.zeros((int((max(ends) + 1.0) * rate), 2), np.float32)
    regions: list[list[tuple[float, float]]] = [[], []]
    for channel, phrases in enumerate(placed):
        for index, start in phrases:
            voiced = phrase(index, rate)
            first = int(start * rate)
            call[first: first + len(voiced), channel] = voiced
            regions[channel].append((first / rate, (first + len(voiced)) / rate))
    return call, regions


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


def tone(seconds: float, rate: int = SAMPLE_RATE, frequency: float = 440.0, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """A sine, float32: (n,) for one channel, (n, channels) with channel c at amplitude / (c + 1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    mono = amplitude * np.sin(2 * np.pi * frequency * t)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


# (container, codec, codec sample rate or None for the input's): every compressed format users send
ENCODINGS = {
    "flac": ("flac", "flac", None),
    "ogg_vorbis": ("ogg", "vorbis", None),
    "ogg_opus": ("ogg", "libopus", 48_000),
    "webm_opus": ("webm", "libopus", 48_000),
    "webm_vorbis": ("webm", "vorbis", None),
    "mp3": ("mp3", "libmp3lame", None),
    "m4a_aac": ("ipod", "aac", None),
    "adts_aac": ("adts", "aac", None),
    "wma": ("asf", "wmav2", None),
    "amr_nb": ("amr", "libopencore_amrnb", 8_000),
}
DEFAULT_BIT_RATES = {"wmav2": 128_000, "libopencore_amrnb": 12_200}  # encoders that need one


class Pipe(io.RawIOBase):
    """A file that can only be written forward, as a live recorder's output: muxers cannot go back to write lengths."""

    def __init__(self):
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.data += data
        return len(data)


def encode(samples: np.ndarray, rate: int, encoding: str, bit_rate: int | None = None, streamed: bool = False,
           options: dict[str, str] | None = None) -> bytes:
    """Encode float32 (n,) or (n, channels) samples (1, 2, 6 or 8 channels) with PyAV into one of `ENCODINGS`.

    `streamed`: written to a `Pipe`, so the header says nothing of the length (FLAC total 0, no Xing
    frame count, no Matroska Duration), as recorders and live streams write files. `options`: the muxer's.
    """
    import av

    container, codec, codec_rate = ENCODINGS[encoding]
    planar = samples[None] if samples.ndim == 1 else samples.T
    if codec == "vorbis" and len(planar) == 1:
        planar = np.concatenate([planar, planar])  # FFmpeg's own Vorbis encoder is stereo only
    if codec == "libopencore_amrnb":
        planar = planar.mean(axis=0, keepdims=True)  # AMR is mono only
    layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}[len(planar)]
    buffer = Pipe() if streamed else io.BytesIO()
    with av.open(buffer, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=codec_rate or rate, layout=layout)
        if bit_rate or codec in DEFAULT_BIT_RATES:
            stream.bit_rate = bit_rate or DEFAULT_BIT_RATES[codec]
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        resampler = av.AudioResampler(format=stream.format, layout=layout, rate=stream.rate,
                                      frame_size=stream.codec_context.frame_size or 1024)
        for start in range(0, planar.shape[1], 4096):
            interleaved = np.ascontiguousarray(planar[:, start:start + 4096].T, dtype=np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=layout)
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return bytes(buffer.data) if streamed else buffer.getvalue()


def audio_file(kind: str, samples: np.ndarray, rate: int, bit_rate: int | None = None) -> bytes:
    """A file of `kind`: "pcm16_wav", "float_wav" or one of `ENCODINGS`."""
    if kind == "pcm16_wav":
        return wav_bytes(samples, rate)
    if kind == "float_wav":
        return wav_bytes(samples, rate, "FLOAT")
    return encode(samples, rate, kind, bit_rate)


def soundfile_bytes(samples: np.ndarray, rate: int, file_format: str, subtype: str | None = None) -> bytes:
    """WAV in any subtype, AIFF, FLAC, ... through libsndfile (not OGG: its Vorbis writer crashes on long input)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()
