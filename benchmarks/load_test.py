"""Load test: a real `emoserve serve` process, N concurrent clients posting clips for T seconds.

Reports throughput, latency percentiles, every status/code seen (only 200 and 503 `overloaded`
with Retry-After are acceptable), and the server's resident memory at start and end — it must stay
flat. Compares throughput with the in-process engine on the same clips (the HTTP overhead).

    python benchmarks/load_test.py --model random:tiny --concurrency 64 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from procs import free_port, memory_mib

RESULTS = Path(__file__).parent / "results"




def make_clips(count: int, seed: int = 0) -> list[bytes]:
    """WAV clips of 2–10 s of noise-modulated tones (content does not change the model's speed)."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        seconds = rng.uniform(2, 10)
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
        buffer = io.BytesIO()
        sf.write(buffer, wav.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return clips


def start_server(model: str, port: int, extra_env: dict) -> subprocess.Popen:
    env = dict(os.environ, **extra_env)
    return subprocess.Popen([sys.executable, "-m", "emoserve", "serve", "--model", model, "--port", str(port),
                             "--api-only"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_healthy(base: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("server exited during start-up")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become healthy")


async def client_loop(base: str, clips: list[bytes], stop_at: float, index: int, record: list) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        i = index
        while time.monotonic() < stop_at:
            data = clips[i % len(clips)]
            i += 1
            started = time.perf_counter()
            try:
                response = await client.post("/v1/analyze", files={"audio_file": ("c.wav", data)})
                code = response.json().get("error", {}).get("code") if response.status_code != 200 else "ok"
                retry_after = response.headers.get("retry-after")
                record.append((response.status_code, code, time.perf_counter() - started, len(data),
                               retry_after))
                if response.status_code == 503 and retry_after:
                    await asyncio.sleep(min(float(retry_after), 1.0))
            except httpx.HTTPError as e:
                record.append((0, type(e).__name__, time.perf_counter() - started, len(data), None))


class RssSampler:
    """Samples the server's resident memory twice a second while the load runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic() - started, memory_mib(self.pid)["VmRSS"]))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, fraction: float) -> float:
        """RSS at a fraction of the run (0 = first sample, 1 = last)."""
        return self.samples[min(int(fraction * len(self.samples)), len(self.samples) - 1)][1]


async def run_load(base: str, clips: list[bytes], concurrency: int, duration: float) -> tuple[list, float]:
    record: list = []
    stop_at = time.monotonic() + duration
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(base, clips, stop_at, i, record) for i in range(concurrency)))
    return record, time.perf_counter() - started


def engine_throughput(model: str, clips: list[bytes], concurrency: int, duration: float) -> float:
    """Clips/s of the in-process engine on the same clips (no HTTP), for the overhead figure."""
    from emoserve.config import get_settings
    from emoserve.inference.emotion_model import EmotionModel
    from emoserve.inference.engine import Engine

    async def run() -> float:
        settings = get_settings(model=model)
        engine = Engine.from_config(settings.engine, EmotionModel.from_config(settings.model))
        await engine.start()
        done = 0
        stop_at = time.monotonic() + duration

        async def worker(i: int) -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                try:
                    await engine.analyze(clips[i % len(clips)])
                    done += 1
                except Exception:  # overloaded: back off like a client would
                    await asyncio.sleep(0.05)
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        await engine.stop()
        return done / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=None, help="EMOSERVE_MAX_QUEUE for the server")
    parser.add_argument("--skip-engine", action="store_true", help="do not measure the in-process engine")
    args = parser.parse_args()

    clips = make_clips(args.clips)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"EMOSERVE_LOG_DIR": str(RESULTS / "load_test_logs")}
    if args.max_queue:
        env["EMOSERVE_MAX_QUEUE"] = str(args.max_queue)
    server = start_server(args.model, port, env)
    try:
        wait_healthy(base, server)
        asyncio.run(run_load(base, clips, 4, 3.0))  # warm the path before measuring memory
        rss_start = memory_mib(server.pid)["VmRSS"]
        with RssSampler(server.pid) as sampler:
            record, elapsed = asyncio.run(run_load(base, clips, args.concurrency, args.duration))
        rss_end = memory_mib(server.pid)["VmRSS"]
        health = httpx.get(base + "/health", timeout=5).status_code
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    outcomes = collections.Counter((status, code) for status, code, *_ in record)
    ok = [r for r in record if r[0] == 200]
    latencies = np.array([r[2] for r in ok]) * 1000 if ok else np.array([np.nan])
    unacceptable = {f"{s} {c}": n for (s, c), n in outcomes.items() if (s, c) not in ((200, "ok"),
                                                                                        (503, "overloaded"))}
    missing_retry_after = sum(1 for r in record if r[0] == 503 and not r[4])
    audio_s = sum((r[3] - 44) / 32000 for r in ok)  # PCM16 mono at 16 kHz: 32000 bytes per second
    http_rate = len(ok) / elapsed
    engine_rate = None if args.skip_engine else engine_throughput(args.model, clips, args.concurrency,
                                                                  min(args.duration, 30))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "model": args.model, "concurrency": args.concurrency, "duration_s": elapsed,
        "requests": len(record), "ok": len(ok), "outcomes": {f"{s} {c}": n for (s, c), n in outcomes.items()},
        "unacceptable": unacceptable, "overloaded_without_retry_after": missing_retry_after,
        "clips_per_s": http_rate, "audio_x_realtime": audio_s / elapsed,
        "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                       "p99": float(np.percentile(latencies, 99))},
        "rss_mb": {"start": rss_start, "at_25%": sampler.at(0.25), "at_50%": sampler.at(0.5),
                   "max": max(mb for _, mb in sampler.samples), "end": rss_end},
        "rss_timeline_mb": sampler.samples[::4], "health_after": health,
        "engine_clips_per_s": engine_rate,
        "http_overhead": None if engine_rate is None else 1 - http_rate / engine_rate,
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"load_test-{args.model.replace(':', '-')}-c{args.concurrency}"
    name += f"-q{args.max_queue}" if args.max_queue else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"| model | concurrency | duration s | requests | ok | clips/s | ×realtime | p50 ms | p95 ms | p99 ms "
          f"| RSS start / 25% / 50% / max / end MB | engine clips/s |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.model} | {args.concurrency} | {elapsed:.0f} | {len(record)} | {len(ok)} | {http_rate:.2f} "
          f"| {audio_s / elapsed:.1f} | {result['latency_ms']['p50']:.0f} | {result['latency_ms']['p95']:.0f} "
          f"| {result['latency_ms']['p99']:.0f} | {' / '.join(f'{v:.0f}' for v in result['rss_mb'].values())} "
          f"| {engine_rate if engine_rate is None else f'{engine_rate:.2f}'} |")
    print("outcomes:", dict(result["outcomes"]))
    if unacceptable or missing_retry_after or health != 200:
        raise SystemExit(f"FAILED: unacceptable outcomes {unacceptable}, 503 without Retry-After: "
                         f"{missing_retry_after}, health after: {health}")


if __name__ == "__main__":
    main()
