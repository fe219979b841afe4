"""Long audio over HTTP on localhost: upload time of a 10-minute WAV, and analysis end to end.

Uploads (a real `emoserve serve` process; best of 3 runs each), until the server holds the whole file:
  - tus, one PATCH: the whole file in one request body, one stream (the single-request baseline: a
    chunk PUT is capped at 5 MB and /v1/analyze at 10 MB, so this is the one way to send it in one go),
  - tus, 5 MB PATCHes one after another,
  - chunks of 5 MB or 1 MB, sequential (1 connection) or parallel (4 or 8 connections), ending with
    POST /v1/upload/complete (which joins the chunks and checks the whole-file SHA-256);
each on localhost as fast as it goes, and again with every connection paced by the client to
`--link-mb-s` (default 4 MB/s): an emulated link where one stream is capped (TCP over a long round
trip), which is where parallel chunks pay.
End to end, per model and granularity: parallel upload (1 MB x 8) + complete + the job until it
succeeded (the result JSON received), against the same analysis by the library in this process
(`EmotionModel.analyze_long`, no HTTP, no engine) on the same file: runs alternate between the two
paths (`--repeats` each, best kept), both warmed up first on a 40 s file.

    PYTHONPATH=src python benchmarks/upload_bench.py [--models random:tiny random:large] [--seconds 600]

Prints a table and writes benchmarks/results/upload_<device>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.procs import cpu_model  # noqa: E402
from tests.api.live_server import LiveServer  # noqa: E402
from tests.samples import espeak_available, long_recording, wav_bytes  # noqa: E402

from emoserve import EmotionModel  # noqa: E402
from emoserve.config import get_settings  # noqa: E402

MB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
UPLOADS = [  # (name, kind, piece bytes, connections)
    ("tus, 1 PATCH (one stream)", "tus", None, 1),
    ("tus, 5 MB PATCHes", "tus", 5 * MB, 1),
    ("chunks 5 MB x 1", "chunks", 5 * MB, 1),
    ("chunks 5 MB x 4", "chunks", 5 * MB, 4),
    ("chunks 1 MB x 1", "chunks", MB, 1),
    ("chunks 1 MB x 8", "chunks", MB, 8),
]


def best_of(fn, runs: int = 3) -> float:
    """The best wall time: the run least disturbed on this shared machine."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def paced(data: bytes, mb_per_s: float | None):
    """The body as is, or fed at most `mb_per_s` per connection (64 kB blocks): an emulated link on which one
    TCP stream cannot go faster (e.g. a 64 kB window over a 16 ms round trip is ~4 MB/s)."""
    if mb_per_s is None:
        return data

    def blocks():
        started = time.perf_counter()
        for offset in range(0, len(data), 64 * 1024):
            time.sleep(max(0.0, started + offset / (mb_per_s * MB) - time.perf_counter()))
            yield data[offset: offset + 64 * 1024]

    return blocks()


def send_chunks(http: httpx.Client, base: str, data: bytes, chunk_size: int, connections: int,
                granularity: str = "utterance", mb_per_s: float | None = None) -> tuple[str, str]:
    """init → every chunk (in parallel) → complete: the upload id and the job that complete started."""
    upload = http.post(f"{base}/v1/upload/init", json={
        "filename": "call.wav", "total_size": len(data), "chunk_size": chunk_size,
        "sha256": hashlib.sha256(data).hexdigest()}).raise_for_status().json()

    def put(index: int) -> None:
        piece = data[index * chunk_size:][:chunk_size]
        http.put(upload["chunk_urls"][index], content=paced(piece, mb_per_s)).raise_for_status()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(put, range(upload["chunk_count"])))
    job = http.post(f"{base}/v1/upload/complete", json={"upload_id": upload["upload_id"],
                                                        "granularity": granularity}).raise_for_status()
    return upload["upload_id"], job.json()["job_id"]


def send_tus(http: httpx.Client, base: str, data: bytes, piece: int | None, mb_per_s: float | None = None) -> str:
    url = http.post(f"{base}/v1/tus/", headers={**TUS, "Upload-Length": str(len(data))}) \
        .raise_for_status().headers["location"]
    piece = piece or len(data)
    for offset in range(0, len(data), piece):
        http.patch(url, content=paced(data[offset: offset + piece], mb_per_s), headers={
            **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}).raise_for_status()
    return url


def bench_uploads(root: Path, data: bytes, device: str, link_mb_s: list[float | None]) -> list[dict]:
    server = LiveServer(root / "uploads", device=device).start()
    rows = []
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=8)) as http:
            for link, (name, kind, piece, connections) in itertools.product(link_mb_s, UPLOADS):
                sent: list[tuple[str, str | None]] = []

                def once(kind=kind, piece=piece, connections=connections, sent=sent, link=link) -> None:
                    if kind == "tus":
                        sent.append((send_tus(http, server.base, data, piece, link), None))
                    else:
                        upload_id, job_id = send_chunks(http, server.base, data, piece, connections, mb_per_s=link)
                        sent.append((f"{server.base}/v1/upload/{upload_id}", f"{server.base}/v1/jobs/{job_id}"))

                wall = best_of(once)
                for upload_url, job_url in sent:  # only the upload is measured: drop the jobs and the files
                    if job_url:
                        http.delete(job_url)
                    http.delete(upload_url, headers=TUS)
                rows.append({"upload": name, "link_mb_per_s_per_connection": link, "bytes": len(data),
                             "connections": connections, "wall_s": round(wall, 3),
                             "mb_per_s": round(len(data) / MB / wall, 1)})
                print(f"{name:<28} {link or 'localhost':>10} {connections:>5} {wall:>8.3f} "
                      f"{rows[-1]['mb_per_s']:>8.1f}", flush=True)
    finally:
        server.stop()
    return rows


def analyse_over_http(http: httpx.Client, base: str, data: bytes, granularity: str) -> tuple[float, float, dict]:
    """Upload (1 MB x 8) + complete, then wait for the job: (upload s, analysis s, final job)."""
    started = time.perf_counter()
    _, job_id = send_chunks(http, base, data, MB, 8, granularity)
    uploaded = time.perf_counter()
    while (job := http.get(f"{base}/v1/jobs/{job_id}", params={"wait": 60}).json())["status"] not in \
            ("succeeded", "failed"):
        pass
    assert job["status"] == "succeeded", job["error"]
    return uploaded - started, time.perf_counter() - uploaded, job


def bench_end_to_end(root: Path, path: Path, model_name: str, granularities: list[str], device: str,
                     repeats: int) -> list[dict]:
    """HTTP runs and library runs alternate (HTTP, library, library, HTTP, ...; the server idles while the
    library runs), both warmed up on a 40 s file first: on this shared machine the load drifts over
    minutes, so each path keeps its best run."""
    data = path.read_bytes()
    warm_up = wav_bytes(long_recording(40.0, seed=12))
    model = EmotionModel.from_config(get_settings(model=model_name, device=device).model)  # as the server loads it
    server = LiveServer(root / model_name.replace(":", "-"), model=model_name, device=device).start()
    rows = []
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=8)) as http:
            for granularity in granularities:
                analyse_over_http(http, server.base, warm_up, granularity)
                model.analyze_long(warm_up, granularity=granularity)
            for granularity in granularities:
                over_http, library = [], []
                for run in range(repeats):
                    for step in (("http", "library") if run % 2 == 0 else ("library", "http")):
                        if step == "http":
                            over_http.append(analyse_over_http(http, server.base, data, granularity))
                        else:
                            started = time.perf_counter()
                            result = model.analyze_long(path, granularity=granularity)
                            library.append((time.perf_counter() - started, len(result.segments)))
                upload_s, analysis_s, job = min(over_http, key=lambda run: run[0] + run[1])
                rows.append({"model": model_name, "granularity": granularity, "path": "HTTP upload + job",
                             "upload_s": round(upload_s, 2), "analysis_s": round(analysis_s, 2),
                             "total_s": round(upload_s + analysis_s, 2), "segments": len(job["result"]["segments"]),
                             "runs_total_s": [round(u + a, 2) for u, a, _ in over_http]})
                print_e2e(rows[-1])
                wall, segments = min(library)
                rows.append({"model": model_name, "granularity": granularity, "path": "library analyze_long (baseline)",
                             "upload_s": None, "analysis_s": round(wall, 2), "total_s": round(wall, 2),
                             "segments": segments, "runs_total_s": [round(w, 2) for w, _ in library]})
                print_e2e(rows[-1])
    finally:
        server.stop()
    return rows


def print_e2e(row: dict) -> None:
    upload = "-" if row["upload_s"] is None else f"{row['upload_s']:.2f}"
    print(f"{row['model']:<13} {row['granularity']:<10} {row['path']:<32} {upload:>8} {row['analysis_s']:>10.2f} "
          f"{row['total_s']:>8.2f} {row['segments']:>9}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["random:tiny", "random:large"])
    parser.add_argument("--granularities", nargs="+", default=["utterance", "frame"])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--link-mb-s", type=float, nargs="*", default=[4.0],
                        help="also upload with each connection paced to this many MB/s (an emulated link)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs of each path (the best is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        path = root / "recording.wav"
        sf.write(path, long_recording(args.seconds, seed=11), 16_000, subtype="PCM_16")
        data = path.read_bytes()
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.seconds:.0f} s recording "
              f"({'espeak-ng phrases' if espeak_available() else 'noise bursts'}), 16 kHz PCM16 WAV, "
              f"{len(data) / MB:.1f} MB, server on localhost, device {args.device}")
        print(f"{'upload (best of 3)':<28} {'link MB/s':>10} {'conns':>5} {'wall s':>8} {'MB/s':>8}")
        uploads = bench_uploads(root, data, args.device, [None, *args.link_mb_s])
        print(f"\n{'model':<13} {'granularity':<10} {'path':<32} {'upload s':>8} {'analysis s':>10} {'total s':>8} "
              f"{'segments':>9}")
        end_to_end = [row for name in args.models
                      for row in bench_end_to_end(root, path, name, args.granularities, args.device, args.repeats)]

    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    report = {
        "benchmark": "long audio over HTTP: upload and end to end", "recording_s": args.seconds,
        "file_bytes": len(data), "speech_source": "espeak-ng" if espeak_available() else "noise",
        "device": args.device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0], "torch": torch.__version__,
        "uploads": uploads, "end_to_end": end_to_end,
    }
    out = args.out / f"upload_{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
