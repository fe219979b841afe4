"""What client-side pre-conversion (`EmoClient(preconvert=True)`, CLI `--preconvert`) saves the server.

The same clips are sent as the user's MP3/M4A file, or as the 16 kHz mono FLAC or PCM16 WAV the
client makes of it (`emoserve.client.preconvert`). For each, in the same run:
- bytes on the wire (the upload);
- server decode CPU: what the server's decode stage (`Engine.decode` → `emoserve.audio.decode_audio`)
  spends on that payload, measured in this process with time.process_time (median of `--repeats`).
  The model's work is the same whatever was sent, so this difference is the server CPU saved;
- the client's CPU to pre-convert (median of `--repeats`);
- a check through a real server (`emoserve serve`, subprocess, random:tiny) that every variant gives
  the same emotion, within the 16-bit rounding of the pre-converted audio.

    PYTHONPATH=src python benchmarks/preconvert_bench.py [--seconds 25] [--repeats 15]

Prints a markdown table and writes benchmarks/results/preconvert.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.samples / tests.integrations.live: the generators and server the tests use

from tests.integrations.live import free_port, wait_until_healthy  # noqa: E402
from tests.samples import encode, long_recording  # noqa: E402

from emoserve.audio import decode_audio  # noqa: E402
from emoserve.client import PRECONVERT_FORMATS, EmoClient, preconvert  # noqa: E402

SOURCES = {  # name → (rate, channels, encoding, bit rate): how phones and recorders write voice messages
    "MP3 44.1 kHz stereo 128 kbps": (44_100, 2, "mp3", 128_000),
    "M4A/AAC 44.1 kHz stereo 128 kbps": (44_100, 2, "m4a_aac", 128_000),
    "M4A/AAC 48 kHz mono 64 kbps": (48_000, 1, "m4a_aac", 64_000),
}


def source_file(seconds: float, rate: int, channels: int, encoding: str, bit_rate: int) -> bytes:
    voice = soxr.resample(long_recording(seconds, seed=7), 16_000, rate).astype(np.float32)
    samples = voice if channels == 1 else np.stack([voice, 0.8 * voice], axis=1)
    return encode(samples, rate, encoding, bit_rate=bit_rate)


def cpu_ms(call, repeats: int) -> float:
    """Median CPU milliseconds of `call()` in this process (every thread counts)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        call()
        times.append(1000 * (time.process_time() - started))
    return float(np.median(times))


def converted(original: bytes, fmt: str) -> bytes:
    buffer = io.BytesIO()
    preconvert(original, buffer, fmt)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="clip length (≤ the 30 s request limit)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    rows = []
    for source, (rate, channels, encoding, bit_rate) in SOURCES.items():
        original = source_file(args.seconds, rate, channels, encoding, bit_rate)
        suffix = ".mp3" if encoding == "mp3" else ".m4a"
        variants = {"as is": ("clip" + suffix, original, 0.0)}
        for fmt in PRECONVERT_FORMATS:
            client_ms = cpu_ms(lambda o=original, f=fmt: converted(o, f), args.repeats)
            variants[f"pre-converted {fmt.upper()}"] = ("clip." + fmt, converted(original, fmt), client_ms)
        for variant, (name, payload, client_ms) in variants.items():
            rows.append({"source": source, "sent": variant, "name": name, "payload": payload, "bytes": len(payload),
                         "client_cpu_ms": client_ms,
                         "server_decode_cpu_ms": cpu_ms(lambda p=payload: decode_audio(p), args.repeats)})

    port = free_port()
    env = {**os.environ, "EMOSERVE_LOG_DIR": "/tmp/emoserve-preconvert-bench-logs"}
    server = subprocess.Popen([sys.executable, "-m", "emoserve", "serve", "--model", "random:tiny", "--port",
                               str(port), "--api-only"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout=300)
        with EmoClient(f"http://127.0.0.1:{port}", timeout=120) as client:
            for row in rows:
                result = client.analyze(row.pop("payload"), filename=row.pop("name"))
                row["emotion"], row["confidence"] = result.emotion, result.confidence
    finally:
        server.terminate()
        server.wait(30)

    print(f"\n{args.seconds:g} s clips of espeak-ng speech; CPU: median of {args.repeats}, {os.cpu_count()} CPUs "
          f"({platform.machine()}); load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| source | sent | bytes | vs original | server decode CPU (ms) | server CPU saved (ms) | "
          "client CPU to convert (ms) | emotion (random:tiny) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        first = next(r for r in rows if r["source"] == row["source"])
        row["bytes_ratio"] = row["bytes"] / first["bytes"]
        row["server_cpu_saved_ms"] = first["server_decode_cpu_ms"] - row["server_decode_cpu_ms"]
        print(f"| {row['source']} | {row['sent']} | {row['bytes']:,} | {row['bytes_ratio']:.2f}× | "
              f"{row['server_decode_cpu_ms']:.1f} | {row['server_cpu_saved_ms']:.1f} | {row['client_cpu_ms']:.1f} | "
              f"{row['emotion']} {row['confidence']:.3f} |")
    out = ROOT / "benchmarks" / "results" / "preconvert.json"
    out.write_text(json.dumps({"seconds": args.seconds, "repeats": args.repeats, "cpus": os.cpu_count(),
                               "machine": platform.machine(), "load_average": os.getloadavg(), "rows": rows},
                              indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
