"""Decode + resample throughput of `emoserve.audio.decode_audio` against `librosa.load`, same files, same run.

Throughput is audio seconds per CPU second of this process (time.process_time: every thread counts),
for each format at two clip lengths. Both sides get the same file path and must return 16 kHz mono
float32; the table also shows how well each output matches the source audio (normalised
cross-correlation at the best lag, and that lag: a codec delay the decoder did not undo).

    PYTHONPATH=src python benchmarks/audio_decode.py [--repeats 7] [--lengths 5 60]

Prints a markdown table and writes benchmarks/results/audio_decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.samples: the same generators and encoders the tests use

from tests.samples import encode, espeak_available, speech, sweep, wav_bytes  # noqa: E402

from emoserve.audio import SAMPLE_RATE, decode_audio  # noqa: E402

SENTENCES = ["I can't believe you did that, this is wonderful news!",
             "Please leave me alone, I am so tired of all of this.",
             "What was that noise? Did you hear it too? I'm scared.",
             "The meeting is at three o'clock in the second floor room."]

# name → how a user's file of that kind is typically made: (rate, channels, how to write it)
FORMATS = {
    "WAV 16 kHz mono PCM16": (16_000, 1, lambda x, rate: wav_bytes(x, rate)),
    "WAV 44.1 kHz stereo PCM16": (44_100, 2, lambda x, rate: wav_bytes(x, rate)),
    "MP3 44.1 kHz stereo 128 kbps": (44_100, 2, lambda x, rate: encode(x, rate, "mp3", bit_rate=128_000)),
    "Opus (Ogg) 48 kHz mono 32 kbps": (48_000, 1, lambda x, rate: encode(x, rate, "ogg_opus", bit_rate=32_000)),
}


def voice(seconds: float) -> tuple[np.ndarray, str]:
    """`seconds` of espeak-ng speech at 16 kHz (a sine sweep when espeak-ng is missing)."""
    if not espeak_available():
        return sweep(seconds, SAMPLE_RATE), "sine sweep (espeak-ng not installed)"
    parts, total = [], 0
    while total < seconds * SAMPLE_RATE:
        parts.append(speech(SENTENCES[len(parts) % len(SENTENCES)], rate=SAMPLE_RATE))
        total += len(parts[-1])
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)], "espeak-ng speech"


def to_layout(samples: np.ndarray, rate: int, channels: int) -> np.ndarray:
    import soxr

    resampled = soxr.resample(samples, SAMPLE_RATE, rate).astype(np.float32) if rate != SAMPLE_RATE else samples
    return resampled if channels == 1 else np.stack([resampled, 0.6 * resampled], axis=1)


def cpu_seconds(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return times


def match(source: np.ndarray, decoded: np.ndarray) -> tuple[float, float]:
    """How well decoded audio matches the source: (peak normalised cross-correlation, its lag in ms)."""
    from scipy.signal import correlate

    scores = correlate(decoded, source, method="fft") / (np.linalg.norm(decoded) * np.linalg.norm(source))
    best = int(np.argmax(scores))
    return round(float(scores[best]), 4), round(1000 * (best - (len(source) - 1)) / SAMPLE_RATE, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=float, nargs="+", default=[5.0, 60.0], help="clip lengths in seconds")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "audio_decode.json")
    args = parser.parse_args()

    import librosa

    source, source_name = voice(max(args.lengths))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (rate, channels, write) in FORMATS.items():
            for seconds in args.lengths:
                clip = source[: int(seconds * SAMPLE_RATE)]
                path = Path(tmp) / f"{len(rows)}.bin"
                path.write_bytes(write(to_layout(clip, rate, channels), rate))

                def ours(path=path):
                    return decode_audio(path)

                def theirs(path=path):
                    return librosa.load(path, sr=SAMPLE_RATE, mono=True)[0]

                ours_out, theirs_out = ours(), theirs()  # warm up both; keep the outputs to compare
                ours_times, theirs_times = [], []
                for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
                    ours_times += cpu_seconds(ours, 1)
                    theirs_times += cpu_seconds(theirs, 1)
                ours_rate = seconds / float(np.median(ours_times))
                theirs_rate = seconds / float(np.median(theirs_times))
                rows.append({"format": name, "seconds": seconds, "file_bytes": path.stat().st_size,
                             "emoserve_audio_s_per_cpu_s": round(ours_rate, 1),
                             "librosa_audio_s_per_cpu_s": round(theirs_rate, 1),
                             "speedup": round(ours_rate / theirs_rate, 2),
                             "emoserve_ms": round(1000 * float(np.median(ours_times)), 2),
                             "librosa_ms": round(1000 * float(np.median(theirs_times)), 2),
                             "samples": {"emoserve": len(ours_out), "librosa": len(theirs_out)},
                             "match_to_source": {"emoserve": match(clip, ours_out),
                                                 "librosa": match(clip, theirs_out)}})

    print(f"decode + resample to 16 kHz mono, audio seconds per CPU second (median of {args.repeats}); "
          f"source: {source_name}\n")
    print("| format | clip | emoserve | librosa.load | speedup | emoserve ms | librosa ms | "
          "match to source (lag): emoserve / librosa |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        (ours_match, ours_lag), (theirs_match, theirs_lag) = row["match_to_source"].values()
        print(f"| {row['format']} | {row['seconds']:g} s | {row['emoserve_audio_s_per_cpu_s']:,.0f} | "
              f"{row['librosa_audio_s_per_cpu_s']:,.0f} | {row['speedup']:.2f}× | {row['emoserve_ms']} | "
              f"{row['librosa_ms']} | {ours_match:.3f} ({ours_lag:g} ms) / {theirs_match:.3f} ({theirs_lag:g} ms) |")

    import av
    import soundfile
    import soxr

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "audio_decode", "unit": "audio seconds per CPU second", "statistic": "median",
        "repeats": args.repeats, "source": source_name, "rows": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": {"numpy": np.__version__, "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__, "av": av.__version__, "soxr": soxr.__version__,
                     "librosa": librosa.__version__},
    }, indent=2) + "\n")
    print(f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
