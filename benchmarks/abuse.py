"""Abuse benchmark: a real `emoserve serve` (with an API key) under hostile clients beside normal ones.

For `--seconds` (60 by default), `--clients` (64) concurrent clients on loopback, in four kinds:
  - slow:       upload bodies (chunk PUTs and tus PATCHes) sent a few bytes per second (slowloris);
  - paths:      a unique random path per request, half under /v1/ without a key (metrics label growth);
  - wrong_keys: GET /v1/models with a different wrong API key each time (brute force);
  - normal:     /v1/analyze with the right key and a 2–4 s clip, as a real user.
Every second it samples the server's resident memory, the size of the /metrics body and the latency
of /health (from a thread of its own, so the clients' event loop does not delay it). It reports RSS
and /metrics size at start / max / end, /health's worst latency and any non-200, the access log's
size, and the response codes counted per client kind. A sound server keeps RSS and /metrics flat,
answers /health quickly throughout, and keeps serving the normal clients.

    PYTHONPATH=src python benchmarks/abuse.py [--seconds 60] [--clients 64] [--server-env KEY=VALUE ...]

Prints a table and writes benchmarks/results/abuse-<cpu model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import secrets
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from load_test import make_clips, start_server, wait_healthy
from procs import cpu_model, free_port, memory_mib

RESULTS = Path(__file__).parent / "results"
KINDS = ("slow", "paths", "wrong_keys", "normal")
SLOW_BYTES, SLOW_BYTES_PER_S = 32, 4  # one slow body: 32 bytes at 4 bytes a second, 8 s
SAMPLE_EVERY_S = 1.0


class Sampler:
    """Once a second: server RSS (MiB), /metrics body size (bytes), /health status and latency (s)."""

    def __init__(self, base: str, pid: int) -> None:
        self.base, self.pid, self.samples = base, pid, []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self, http: httpx.Client) -> dict:
        started = time.perf_counter()
        try:
            health = http.get("/health").status_code
        except httpx.HTTPError as e:
            health = type(e).__name__
        latency = time.perf_counter() - started
        try:
            metrics_bytes = len(http.get("/metrics").content)
        except httpx.HTTPError:
            metrics_bytes = None
        return {"t": time.monotonic(), "rss_mib": memory_mib(self.pid)["VmRSS"], "metrics_bytes": metrics_bytes,
                "health": health, "health_s": latency}

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stopped.is_set():
                self.samples.append(self.sample(http))
                self.stopped.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


async def slowly(size: int) -> AsyncIterator[bytes]:
    for _ in range(0, size, SLOW_BYTES_PER_S):
        await asyncio.sleep(1)
        yield b"\0" * SLOW_BYTES_PER_S


async def slow_client(http: httpx.AsyncClient, index: int, stop_at: float, record: collections.Counter,
                      clips: list[bytes]) -> None:
    """Even clients: chunk PUTs of one chunked upload; odd ones: tus PATCHes of one tus upload."""
    if index % 2 == 0:
        init = await http.post("/v1/upload/init", json={"total_size": SLOW_BYTES * 10_000, "chunk_size": SLOW_BYTES})
        record[f"init {init.status_code}"] += 1
        chunk_url = init.json()["chunk_urls"][0] if init.status_code == 201 else None
    else:
        created = await http.post("/v1/tus/", headers={"Tus-Resumable": "1.0.0",
                                                      "Upload-Length": str(SLOW_BYTES * 10_000)})
        record[f"create {created.status_code}"] += 1
        tus_url, offset = created.headers.get("location"), 0
    while time.monotonic() < stop_at:
        length = {"Content-Length": str(SLOW_BYTES)}
        if index % 2 == 0 and chunk_url:
            response = await http.put(chunk_url, content=slowly(SLOW_BYTES),
                                      headers={**length, "Content-Type": "application/octet-stream"})
        elif index % 2 == 1 and tus_url:
            response = await http.patch(tus_url, content=slowly(SLOW_BYTES), headers={
                **length, "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(offset)})
            offset = int(response.headers.get("upload-offset", offset))
        else:
            return
        record[str(response.status_code)] += 1


async def paths_client(http: httpx.AsyncClient, index: int, stop_at: float, record: collections.Counter,
                       clips: list[bytes]) -> None:
    """Without the key: even clients under /v1/ (401), odd ones outside it (404)."""
    while time.monotonic() < stop_at:
        path = f"/v1/{secrets.token_hex(8)}" if index % 2 == 0 else f"/{secrets.token_hex(8)}"
        record[str((await http.get(path, headers={"Authorization": ""})).status_code)] += 1


async def wrong_keys_client(http: httpx.AsyncClient, index: int, stop_at: float, record: collections.Counter,
                            clips: list[bytes]) -> None:
    while time.monotonic() < stop_at:
        response = await http.get("/v1/models", headers={"Authorization": f"Bearer {secrets.token_hex(16)}"})
        record[str(response.status_code)] += 1


async def normal_client(http: httpx.AsyncClient, index: int, stop_at: float, record: collections.Counter,
                        clips: list[bytes]) -> None:
    while time.monotonic() < stop_at:
        response = await http.post("/v1/analyze", files={"audio_file": ("a.wav", clips[index % len(clips)])})
        record[str(response.status_code)] += 1
        index += 1
        if response.status_code == 503:
            await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 1.0))


SOURCE_ADDRESS = {"slow": "127.0.0.2", "paths": "127.0.0.3", "wrong_keys": "127.0.0.4", "normal": "127.0.0.5"}
CLIENTS = {"slow": slow_client, "paths": paths_client, "wrong_keys": wrong_keys_client, "normal": normal_client}


async def guarded(work, record: collections.Counter) -> None:
    """One client's loop; a transport error counts under its name and the client carries on."""
    while True:
        try:
            await work()
            return
        except httpx.HTTPError as e:
            record[type(e).__name__] += 1
            await asyncio.sleep(0.1)


async def run_clients(base: str, key: str, clients: int, seconds: float, clips: list[bytes]) -> dict:
    records = {kind: collections.Counter() for kind in KINDS}
    stop_at = time.monotonic() + seconds
    auth = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # each kind from its own loopback address, as separate hosts: the server budgets per client address, so an
    # attacker's lock-out must not be what stops the normal clients
    https = {kind: httpx.AsyncClient(base_url=base, headers=auth, timeout=60, limits=limits,
                                     transport=httpx.AsyncHTTPTransport(local_address=SOURCE_ADDRESS[kind]))
             for kind in KINDS}
    tasks = []
    for index in range(clients):
        kind, number = KINDS[index % len(KINDS)], index // len(KINDS)  # number: the client's within its kind
        client = CLIENTS[kind]
        tasks.append(asyncio.create_task(guarded(
            lambda c=client, h=https[kind], n=number, r=records[kind]: c(h, n, stop_at, r, clips), records[kind])))
    _, late = await asyncio.wait(tasks, timeout=seconds + SLOW_BYTES / SLOW_BYTES_PER_S + 5)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    for http in https.values():
        await http.aclose()
    return {kind: dict(sorted(counts.items())) for kind, counts in records.items()}


def start_end_max(values: list) -> dict:
    values = [v for v in values if v is not None]
    return {"start": values[0], "max": max(values), "end": values[-1]} if values else {}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64, help="split evenly over the four kinds")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra EMOSERVE_* settings for the server, e.g. EMOSERVE_RATE_LIMIT_PER_MINUTE=600")
    args = parser.parse_args()

    key = secrets.token_hex(16)
    clips = make_clips(8)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="emoserve-abuse-") as scratch:
        logs = Path(scratch) / "logs"
        env = {"EMOSERVE_API_KEYS": key, "EMOSERVE_LOG_DIR": str(logs),
               "EMOSERVE_DATA_DIR": str(Path(scratch) / "data"), **dict(item.split("=", 1) for item in args.server_env)}
        server = start_server(args.model, port, env)
        try:
            wait_healthy(base, server)
            with Sampler(base, server.pid) as sampler:
                time.sleep(2 * SAMPLE_EVERY_S)  # the idle server's figures first
                started = time.monotonic()
                records = asyncio.run(run_clients(base, key, args.clients, args.seconds, clips))
                elapsed = time.monotonic() - started
                time.sleep(2 * SAMPLE_EVERY_S)  # and once the clients are gone
            log_bytes = sum(f.stat().st_size for f in logs.glob("*.log*"))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)

    samples = sampler.samples
    health_s = [s["health_s"] for s in samples]
    result = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "load_average_end": os.getloadavg()[0], "model": args.model, "clients": args.clients,
        "seconds": round(elapsed, 1), "server_env": args.server_env,
        "rss_mib": start_end_max([s["rss_mib"] for s in samples]),
        "metrics_bytes": start_end_max([s["metrics_bytes"] for s in samples]),
        "health": {"max_s": max(health_s), "median_s": statistics.median(health_s), "samples": len(samples),
                   "not_200": [s["health"] for s in samples if s["health"] != 200]},
        "log_bytes_end": log_bytes, "responses": records,
        "timeline": [{**s, "t": round(s["t"] - samples[0]["t"], 1)} for s in samples],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"abuse-{slug(result['cpu'])}.json"
    path.write_text(json.dumps(result, indent=2))

    rss, metrics = result["rss_mib"], result["metrics_bytes"]
    print(f"abuse: {args.clients} clients starting requests for {args.seconds:g} s ({elapsed:.0f} s until the last "
          f"ended) against {args.model} ({result['cpu']}, "
          f"{result['cpus']} CPUs, load {result['load_average_end']:.1f})\n")
    print("| measure | start | max | end |\n|---|---|---|---|")
    print(f"| server RSS MiB | {rss['start']:.0f} | {rss['max']:.0f} | {rss['end']:.0f} |")
    print(f"| /metrics bytes | {metrics['start']:,} | {metrics['max']:,} | {metrics['end']:,} |")
    print(f"\n/health: median {result['health']['median_s'] * 1000:.0f} ms, max {max(health_s) * 1000:.0f} ms over "
          f"{len(samples)} samples; not 200: {result['health']['not_200'] or 'none'}; logs {log_bytes:,} bytes\n")
    print("| client kind | responses |\n|---|---|")
    for kind, counts in records.items():
        print(f"| {kind} | {', '.join(f'{code}: {n}' for code, n in counts.items()) or '-'} |")
    print(f"\n{path}")


if __name__ == "__main__":
    main()
