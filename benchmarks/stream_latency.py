"""Latency of WebSocket /v1/stream: a real `emoserve serve` process, audio sent at the pace it is spoken.

The client sends 16 kHz PCM16 in messages of `--chunk-ms`, each at the moment its last sample would
have been recorded, and times what comes back:
  - frame latency: from sending the message that holds a frame's last sample to receiving the frame;
  - utterance latency: from sending the message that holds an utterance's end to receiving it;
  - end flush: from sending "end" to receiving {"type": "end"}.
Side by side, the *planned* frame latency: what the window plan alone makes a frame wait for (the
audio up to the end of the window that hands it out, in whole messages), with no compute and no
network. measured − planned is the server's own cost: queue, model, VAD, JSON, localhost transport.
Frames of the last window (handed out after "end") are counted in the end flush, not the frame rows.

    PYTHONPATH=src python benchmarks/stream_latency.py [--model random:large] [--configs 4:1 6:2]
                                                       [--seconds 20] [--streams 1 3]

Prints a table and writes benchmarks/results/stream_latency_<device>_<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from procs import cpu_seconds, free_port
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.samples import espeak_available, long_recording  # noqa: E402

from emoserve.config import StreamConfig  # noqa: E402
from emoserve.model.config import HOP, SAMPLE_RATE  # noqa: E402
from emoserve.timeline.streaming import FrameWindows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"




def start_server(model: str, device: str, window: float, hop: float, log_dir: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, EMOSERVE_STREAM_WINDOW_S=str(window), EMOSERVE_STREAM_HOP_S=str(hop),
               EMOSERVE_LOG_DIR=log_dir, PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen([sys.executable, "-m", "emoserve", "serve", "--model", model, "--device", device,
                                "--port", str(port), "--api-only"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("the server exited while starting")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become healthy")


def planned_release(num_samples: int, options: StreamConfig) -> dict[int, int]:
    """Frame → the stream sample count at which the window plan hands it out (regular windows only)."""
    windows = FrameWindows(options.window_samples, options.hop_samples)
    windows.append(np.zeros(num_samples, np.float32))
    release = {}
    while (window := windows.next_window()) is not None:
        release.update({t: window.start + len(window.samples) for t in range(window.first, window.last)})
        windows.done(window)
    return release


async def one_stream(url: str, pcm: bytes, chunk_samples: int, paced: bool = True) -> dict:
    chunk_s = chunk_samples / SAMPLE_RATE
    sent_at: list[float] = []
    frames: dict[int, float] = {}
    utterances: list[tuple[float, float]] = []  # (end s, received at)
    errors: list[dict] = []
    async with connect(url, max_size=None) as ws:
        async def receive() -> float:
            async for raw in ws:
                message, now = json.loads(raw), time.perf_counter()
                if message["type"] == "frames":
                    first = round(message["start"] * 50)
                    frames.update({first + j: now for j in range(len(message["scores"]))})
                elif message["type"] == "utterance":
                    utterances.append((message["end"], now))
                elif message["type"] == "error":
                    errors.append(message)
                elif message["type"] == "end":
                    return now
            raise RuntimeError("the server closed the stream before its end")

        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        for i, offset in enumerate(range(0, len(pcm), 2 * chunk_samples)):
            if paced:
                await asyncio.sleep(max(0.0, started + (i + 1) * chunk_s - time.perf_counter()))
            await ws.send(pcm[offset: offset + 2 * chunk_samples])
            sent_at.append(time.perf_counter())
        end_sent = time.perf_counter()
        await ws.send("end")
        ended = await receiver
    return {"sent_at": sent_at, "frames": frames, "utterances": utterances, "errors": errors,
            "end_flush_s": ended - end_sent}


def summarize(streams: list[dict], release: dict[int, int], chunk_samples: int) -> dict:
    measured, planned, utterance_latency = [], [], []
    for s in streams:
        for t, received in s["frames"].items():
            if t not in release:
                continue  # handed out by the last window, after "end"
            last_chunk = (HOP * t + 399) // chunk_samples
            measured.append(received - s["sent_at"][last_chunk])
            planned.append(((release[t] - 1) // chunk_samples - last_chunk) * chunk_samples / SAMPLE_RATE)
        for end_s, received in s["utterances"]:
            chunk = min(int(end_s * SAMPLE_RATE) - 1, len(s["sent_at"]) * chunk_samples - 1) // chunk_samples
            utterance_latency.append(received - s["sent_at"][chunk])
    m, p = np.array(measured), np.array(planned)
    q = quantile
    return {"frames": len(m), "planned_p50_s": q(p, 0.5), "planned_max_s": q(p, 1.0),
            "measured_p50_s": q(m, 0.5), "measured_p90_s": q(m, 0.9), "measured_p99_s": q(m, 0.99),
            "measured_max_s": q(m, 1.0), "overhead_p50_s": q(m - p, 0.5), "overhead_p99_s": q(m - p, 0.99),
            "utterances": len(utterance_latency), "utterance_p50_s": q(np.array(utterance_latency), 0.5),
            "utterance_max_s": q(np.array(utterance_latency), 1.0),
            "end_flush_max_s": round(max(s["end_flush_s"] for s in streams), 3),
            "errors": sum(len(s["errors"]) for s in streams)}


def quantile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.quantile(values, q)), 3) if len(values) else None


async def run_streams(url: str, pcm: bytes, chunk_samples: int, count: int, paced: bool = True) -> list[dict]:
    return await asyncio.gather(*(one_stream(url, pcm, chunk_samples, paced) for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:large")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=["4:1", "6:2", "4:2"], help="window_s:hop_s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 3], help="concurrent streams")
    parser.add_argument("--chunk-ms", type=int, default=20)
    args = parser.parse_args()

    wav = long_recording(args.seconds, seed=3)
    pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
    chunk_samples = args.chunk_ms * SAMPLE_RATE // 1000
    rows = []
    header = (f"{'window:hop':>10} {'streams':>7} {'planned p50/max':>15} {'measured p50/p90/p99/max':>25} "
              f"{'overhead p50/p99':>16} {'utt p50/max':>12} {'end flush':>9} {'cpu s/s':>7} {'err':>3} {'load':>5}")
    print(f"model {args.model} on {args.device}, {args.seconds:g} s of "
          f"{'espeak-ng speech' if espeak_available() else 'noise bursts'} in {args.chunk_ms} ms messages, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs (shared machine: timings are noisy)")
    print(header)
    with tempfile.TemporaryDirectory() as logs:
        for config in args.configs:
            window, hop = (float(v) for v in config.split(":"))
            release = planned_release(len(wav), StreamConfig(window_s=window, hop_s=hop))
            process, port = start_server(args.model, args.device, window, hop, logs)
            try:
                url = f"ws://127.0.0.1:{port}/v1/stream"
                asyncio.run(run_streams(url, pcm[: 2 * 10 * SAMPLE_RATE], chunk_samples, 1, paced=False))  # warm-up
                for count in args.streams:
                    cpu_before = cpu_seconds(process.pid)
                    streams = asyncio.run(run_streams(url, pcm, chunk_samples, count))
                    cpu = (cpu_seconds(process.pid) - cpu_before) / (args.seconds * count)
                    row = {"window_s": window, "hop_s": hop, "streams": count, **summarize(streams, release,
                                                                                          chunk_samples),
                           "server_cpu_s_per_audio_s": round(cpu, 3), "load_avg_1m": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"{config:>10} {count:>7} {row['planned_p50_s']:>7}/{row['planned_max_s']:<7} "
                          f"{row['measured_p50_s']:>6}/{row['measured_p90_s']}/{row['measured_p99_s']}/"
                          f"{row['measured_max_s']:<6} {row['overhead_p50_s']:>7}/{row['overhead_p99_s']:<8} "
                          f"{row['utterance_p50_s']}/{row['utterance_max_s']:<6} {row['end_flush_max_s']:>9} "
                          f"{row['server_cpu_s_per_audio_s']:>7} {row['errors']:>3} {row['load_avg_1m']:>5.1f}")
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stream_latency_{args.device}_{args.model.replace(':', '-').replace('/', '_')}.json"
    out.write_text(json.dumps({
        "model": args.model, "device": args.device, "audio_s": args.seconds, "chunk_ms": args.chunk_ms,
        "audio": "espeak-ng speech" if espeak_available() else "noise bursts", "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
