"""What the web UI costs the server: start-up time and resident memory of `emoserve serve`, with and without it.

For each model, `emoserve serve` is started as users start it (its own process, a free port), with
the UI (the default) and with `--api-only`, alternating, and timed from the process start to:
  - port: the first HTTP answer (the model then loads in the background),
  - ui: `GET /ui/` → 200 (the page, which does not wait for the model; with the UI only),
  - healthy: `GET /health` → 200 (model loaded and warmed up).
Then the CPU time the process used (user + system, all threads: steadier than wall time on a busy
machine), its resident memory (VmRSS, once healthy and the page served) and its peak (VmHWM).
One untimed start first fills the caches (the OS's file cache, the UI's spoken examples).

    PYTHONPATH=src python benchmarks/ui_overhead.py [--models random:tiny random:large] [--runs 3]

Medians of `--runs` starts. Prints a table and writes benchmarks/results/ui_overhead.json.
The original deployment claimed API-only was 40% faster to start and 65% smaller.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procs import cpu_seconds, free_port, memory_mib  # noqa: E402

MODES = {"with UI": [], "API only": ["--api-only"]}




def wait_for(client: httpx.Client, url: str, process: subprocess.Popen, started: float, deadline_s: float,
             accept=lambda response: True) -> float:
    """Seconds from `started` until `url` answers as `accept` wants."""
    while time.perf_counter() - started < deadline_s:
        try:
            if accept(client.get(url, timeout=5)):
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer in {deadline_s} s")


def start_once(model: str, flags: list[str], home: Path, deadline_s: float) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EMOSERVE_LOG_DIR=str(home / "logs"), EMOSERVE_CACHE=str(home / "cache"),
               GRADIO_TEMP_DIR=str(home / "gradio"), PYTHONPATH=str(ROOT / "src"))
    with open(home / "stdout.log", "ab") as output, httpx.Client() as client:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "emoserve", "serve", "--model", model, "--port", str(port),
                                    *flags], env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            row = {"port_s": wait_for(client, base + "/health", process, started, deadline_s)}
            if "--api-only" in flags:
                row["ui_s"], row["ui_status"] = None, client.get(base + "/ui/", timeout=10).status_code  # 404
            else:
                row["ui_s"] = wait_for(client, base + "/ui/", process, started, deadline_s,
                                       lambda r: r.status_code == 200)
                row["ui_status"] = 200
            row["healthy_s"] = wait_for(client, base + "/health", process, started, deadline_s,
                                        lambda r: r.status_code == 200)
            row["cpu_s"] = cpu_seconds(process.pid)
            memory = memory_mib(process.pid)
            row["rss_mib"], row["peak_mib"] = memory["VmRSS"], memory["VmHWM"]
        finally:
            process.terminate()
            process.wait(30)
    return row


def median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def bench(models: list[str], runs: int, deadline_s: float) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="emoserve-ui-bench-") as scratch:
        home = Path(scratch)
        for model in models:
            for flags in MODES.values():
                start_once(model, flags, home, deadline_s)  # untimed: caches
            samples: dict[str, list[dict]] = {mode: [] for mode in MODES}
            for _ in range(runs):
                for mode, flags in MODES.items():  # alternating, so drift on this shared machine hits both
                    samples[mode].append(start_once(model, flags, home, deadline_s))
            for mode, rows in samples.items():
                results.append({"model": model, "mode": mode, "runs": rows,
                                **{key: median_of(rows, key) for key in ("port_s", "ui_s", "healthy_s", "cpu_s",
                                                                         "rss_mib", "peak_mib")}})
    return results


def table(results: list[dict]) -> str:
    lines = ["| model | mode | port answers (s) | /ui answers (s) | /health healthy (s) | CPU to healthy (s) "
             "| RSS (MiB) | peak RSS (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ui = f"{r['ui_s']:.2f}" if r["ui_s"] is not None else "—"
        lines.append(f"| {r['model']} | {r['mode']} | {r['port_s']:.2f} | {ui} | {r['healthy_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['rss_mib']:.0f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def savings(results: list[dict]) -> list[dict]:
    """How much faster and smaller API-only is than the same server with the UI, per model."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        ui, api = (next(r for r in results if r["model"] == model and r["mode"] == mode) for mode in MODES)
        out.append({"model": model,
                    "healthy_faster_pct": 100 * (1 - api["healthy_s"] / ui["healthy_s"]),
                    "port_faster_pct": 100 * (1 - api["port_s"] / ui["port_s"]),
                    "cpu_less_pct": 100 * (1 - api["cpu_s"] / ui["cpu_s"]),
                    "rss_smaller_pct": 100 * (1 - api["rss_mib"] / ui["rss_mib"]),
                    "rss_ui_mib": ui["rss_mib"] - api["rss_mib"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["random:tiny", "random:large"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds a start may take")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = bench(args.models, args.runs, args.deadline)
    saved = savings(results)
    print(table(results))
    print()
    for s in saved:
        print(f"{s['model']}: API-only is healthy {s['healthy_faster_pct']:.0f}% sooner (with "
              f"{s['cpu_less_pct']:.0f}% less CPU), answers its port {s['port_faster_pct']:.0f}% sooner, and is "
              f"{s['rss_smaller_pct']:.0f}% smaller "
              f"({s['rss_ui_mib']:.0f} MiB less) than with the UI (original claim: 40% faster, 65% smaller)")
    report = {"benchmark": "ui_overhead", "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "python": platform.python_version(), "load_avg": os.getloadavg(), "runs": args.runs,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results, "savings": saved}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ui_overhead.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
