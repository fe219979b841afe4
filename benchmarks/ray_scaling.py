"""Requests per second of `emoserve serve --ray` with 1 and 2 EmotionEngine replicas (1 torch thread each), beside
the single-process server at equal resources, all measured in the same run, on a two-node loopback Ray cluster.

    PYTHONPATH=src python benchmarks/ray_scaling.py --model random:base --seconds 15 --concurrency 16

Rows: `single, 1 thread` (uvicorn, one engine of 1 thread: the resources of one Ray model replica),
`single, 2 threads` (the resources of two), `ray, 1 replica`, `ray, 2 replicas`. Each runs `--concurrency`
clients that send one clip after another for `--seconds` after a warm-up (requests wholly inside the
window count); 503s are counted, not retried. Prints a table with the CPU's name and writes JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on 127.0.0.1 (read at import)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import cpu_model, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE = {"num_cpus": 2, "object_store_memory": 200 * 1024**2, "node_ip_address": "127.0.0.1"}


def clip_bytes(seconds: float) -> bytes:
    sys.path.insert(0, str(ROOT))
    from tests.samples import sweep, wav_bytes

    return wav_bytes(sweep(seconds))


def wait_healthy(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).json().get("status") == "healthy":
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} did not become healthy")


def load(base: str, clip: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    """Clients sending one clip after another; counts of answers in the measured window."""
    counts = {"ok": 0, "overloaded": 0, "other": 0}
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + warmup
    end = start + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.monotonic() < end:
                sent = time.monotonic()
                r = c.post("/v1/analyze", files={"audio_file": ("clip.wav", clip, "audio/wav")})
                if sent < start or time.monotonic() > end:  # only requests wholly inside the window
                    continue
                kind = "ok" if r.status_code == 200 else "overloaded" if r.status_code == 503 else "other"
                with lock:
                    counts[kind] += 1
                    if kind == "ok":
                        latencies.append(time.monotonic() - sent)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else None
    return {**counts, "requests_per_s": counts["ok"] / seconds, "p50_s": p50}


def single_process(model: str, threads: int, args, clip: bytes, root: Path) -> dict:
    port = free_port()
    env = {**os.environ, "EMOSERVE_THREADS": str(threads), "EMOSERVE_DATA_DIR": str(root / "data"),
           "EMOSERVE_LOG_DIR": str(root / "logs"), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "emoserve", "serve", "--model", model, "--host", "127.0.0.1", "--port",
               str(port), "--api-only"]
    with open(root / f"single-{threads}.out", "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        return load(base, clip, args.concurrency, args.seconds, args.warmup)
    finally:
        process.terminate()
        process.wait(30)


def on_ray(model: str, replicas: int, args, clip: bytes, root: Path, address: str) -> dict:
    import ray
    from ray import serve

    from emoserve.config import Settings
    from emoserve.scale.serve import deploy

    port = free_port()
    settings = Settings.from_flat(model=model, host="127.0.0.1", port=port, api_only=True, threads=1,
                                  data_dir=root / "data", log_dir=root / "logs", ray_min_replicas=replicas,
                                  ray_max_replicas=replicas)
    ray.init(address=address)
    try:
        deploy(settings, proxy_location="HeadOnly")
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        return load(base, clip, args.concurrency, args.seconds, args.warmup)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:base")
    parser.add_argument("--clip-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_scaling.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ray.cluster_utils import Cluster

    clip = clip_bytes(args.clip_s)
    load_before = os.getloadavg()[0]
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray_scaling-{os.getpid()}"
    root.mkdir(parents=True)
    rows = {"single, 1 thread": single_process(args.model, 1, args, clip, root),
            "single, 2 threads": single_process(args.model, 2, args, clip, root)}
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    try:
        for replicas in (1, 2):
            rows[f"ray, {replicas} replica{'s' * (replicas > 1)}"] = on_ray(args.model, replicas, args, clip, root,
                                                                           cluster.address)
    finally:
        cluster.shutdown()
    cpu = cpu_model()
    print(f"{args.model}, {args.clip_s:g} s clips, c={args.concurrency}, {args.seconds:g} s each, CPU: {cpu} "
          f"({os.cpu_count()} cores), load average {load_before:.1f} before the run")
    print(f"{'server':<20}{'req/s':>8}{'p50 s':>8}{'503':>6}{'other':>7}")
    for name, row in rows.items():
        p50 = f"{row['p50_s']:.3f}" if row["p50_s"] is not None else "-"
        print(f"{name:<20}{row['requests_per_s']:>8.2f}{p50:>8}{row['overloaded']:>6}{row['other']:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "model": args.model, "clip_s": args.clip_s,
                                    "concurrency": args.concurrency, "seconds": args.seconds,
                                    "load_average_before": load_before, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
