"""`emoserve bench`: backends × precisions against FunASR's generate, paired, in one table per run.

Every system runs in a process of its own (its own peak memory, threads and allocator), and all are
started before timing: each clip then goes through every system in immediate succession, round after
round, and a system's speed-up is the median of its per-clip ratios to FunASR's time on the same clip.
Background load that comes and goes (a shared machine) hits both sides of a ratio alike. The model call
alone is timed (one clip, no queue): the forward pass and whatever each system does around it.

Rows: FunASR `AutoModel.generate` (its default ncpu=4), torch exact and fast, onnxruntime fp32 and int8,
openvino fp32 and int8, and openvino bf16 where the CPU computes bf16 natively (emulated elsewhere, so
skipped with the reason). Columns: speed-up vs FunASR, clips/s, accuracy against torch exact fp32 on the
same clips (label agreement, max score error), peak RSS of the system's process, start-up (load from the
model cache + first inference; the one-off ONNX export is timed apart, before).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import multiprocessing
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bench import isolated, machine_info, synthetic_clip
from .common import console


@dataclass(frozen=True)
class System:
    name: str
    backend: str  # "funasr", "torch", "onnxruntime", "openvino"
    precision: str = "exact"  # torch: exact | fast; FunASR: its ncpu
    variant: str | None = None  # graph backends: fp32, int8, fp16, bf16


def default_systems(funasr_ncpu: int) -> tuple[list[System], dict[str, str]]:
    """Every backend × precision this machine has, and the ones left out with why (funasr_ncpu 0: no FunASR)."""
    import importlib.util

    from ..model.cpu import cpu_features

    systems = [System(f"FunASR generate (ncpu={funasr_ncpu})", "funasr", str(funasr_ncpu)),
               System("torch exact", "torch", "exact"), System("torch fast", "torch", "fast")]
    skipped = {}
    for backend, variants in (("onnxruntime", ("fp32", "int8")), ("openvino", ("fp32", "int8", "bf16"))):
        if importlib.util.find_spec(backend) is None:
            skipped[backend] = f"{backend} is not installed"
            continue
        for variant in variants:
            if variant == "bf16" and not cpu_features().native_bf16:
                skipped[f"{backend} bf16"] = f"no native bf16 on {cpu_features().describe()} (emulated, slow)"
                continue
            systems.append(System(f"{backend} {variant}", backend, "exact" if variant == "fp32" else "fast", variant))
    if not funasr_ncpu or importlib.util.find_spec("funasr") is None:
        systems = systems[1:]
        skipped["FunASR"] = "not asked for" if not funasr_ncpu else \
            "funasr is not installed (pip install funasr==1.4.16 --no-deps)"
    return systems, skipped


def load_system(system: System, model_dir: Path, cache: Path, threads: int):
    """A clip → its scores over the labels in use, for one system."""
    if system.backend == "funasr":
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from funasr import AutoModel

            model = AutoModel(model=str(model_dir), disable_update=True, device="cpu", disable_pbar=True,
                              log_level="ERROR", ncpu=int(system.precision))
        logging.getLogger().setLevel(logging.WARNING)

        def run_funasr(clip: np.ndarray) -> np.ndarray:
            with contextlib.redirect_stdout(io.StringIO()):
                out = model.generate(clip, granularity="utterance", extract_embedding=False, disable_pbar=True)
            return np.asarray(out[0]["scores"], dtype=np.float32)

        return run_funasr, "FunASR AutoModel.generate"
    import torch

    from ..inference.emotion_model import EmotionModel

    torch.set_num_threads(threads)  # and the same count for a graph backend: every system gets `threads`
    model = EmotionModel.from_pretrained(str(model_dir), device="cpu", cache_dir=cache, precision=system.precision,
                                         backend=system.backend, variant=system.variant, threads=threads)
    return (lambda clip: model.predict([clip])[0].probs), model.info.execution


def worker(connection, system: System, model_dir: Path, cache: Path, threads: int) -> None:
    """One system in its own process: load, first inference, then time each clip it is sent until None."""
    started = time.perf_counter()
    run, execution = load_system(system, model_dir, cache, threads)
    warmup = connection.recv()
    run(warmup)
    connection.send({"startup_s": time.perf_counter() - started, "execution": execution})
    while (clip := connection.recv()) is not None:
        started = time.perf_counter()
        scores = run(clip)
        connection.send((time.perf_counter() - started, scores))
    connection.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB → MiB (Linux)


def export_graphs(model_dir: Path, cache: Path, variants: list[str]) -> float:
    """The one-off ONNX exports into the model cache (what a first start of a graph backend does)."""
    from ..inference.emotion_model import EmotionModel

    started = time.perf_counter()
    for variant in variants:
        EmotionModel.from_pretrained(str(model_dir), device="cpu", cache_dir=cache, backend="onnxruntime",
                                     variant=variant)
    return time.perf_counter() - started


def run_paired(model: str, clips: int, seconds: float, rounds: int, threads: int, funasr_ncpu: int,
               only: list[str] | None, output_dir: Path, seed: int = 0) -> dict:
    """The whole run; writes `bench-<model>-<time>.json` and `.md` into `output_dir` and returns the report."""
    import tempfile

    from ..inference.emotion_model import RANDOM_CONFIGS
    from ..model.checkpoint import random_state_dict
    from ..model.cpu import cpu_features
    from ..testing import save_model_dir

    systems, skipped = default_systems(funasr_ncpu)
    if only:
        systems = [s for s in systems if s.name in only or s.name.split(" (")[0] in only]
    rng = np.random.default_rng(seed)
    audio = [synthetic_clip(rng, seconds) for _ in range(clips)]
    context = multiprocessing.get_context("spawn")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="emoserve-bench-") as tmp:
        config = RANDOM_CONFIGS[model.split(":", 1)[1]]
        model_dir = save_model_dir(Path(tmp) / "model", config, random_state_dict(config, seed))
        cache = Path(tmp) / "cache"
        graphs = sorted({"fp32" if s.variant == "bf16" else s.variant for s in systems if s.variant})
        export_s = 0.0
        if graphs:
            console.print(f"exporting {', '.join(graphs)} ONNX graphs into the cache ...")
            export_s = isolated(export_graphs, model_dir, cache, graphs)
        workers = {}
        for system in systems:  # started one after another: a start-up is timed on an otherwise idle machine
            console.print(f"starting {system.name} ...")
            mine, theirs = context.Pipe()
            process = context.Process(target=worker, args=(theirs, system, model_dir, cache, threads), daemon=True)
            process.start()
            theirs.close()  # so that a worker that dies ends our reads (EOFError) instead of hanging them
            mine.send(audio[0])
            try:
                workers[system.name] = (process, mine, mine.recv())
            except EOFError:
                raise RuntimeError(f"{system.name} failed to start: its error is printed above") from None
        times = {name: np.zeros((rounds, clips)) for name in workers}
        scores: dict[str, list[np.ndarray]] = {name: [] for name in workers}
        for r in range(rounds):
            console.print(f"round {r + 1}/{rounds} ...")
            for c, clip in enumerate(audio):
                for name, (_, connection, _) in workers.items():
                    connection.send(clip)
                    times[name][r, c], out = connection.recv()
                    if r == 0:
                        scores[name].append(out)
        peaks = {}
        for name, (process, connection, _) in workers.items():
            connection.send(None)
            peaks[name] = connection.recv()
            process.join()
    info = {name: started for name, (_, _, started) in workers.items()}
    machine = machine_info("cpu") | {"cpu_features": cpu_features().describe(), "vendor": cpu_features().vendor,
                                     "load_average_before": load_before, "load_average_after": os.getloadavg()}
    report = make_report(model, machine, systems, times, scores, info, peaks, skipped, export_s,
                         dict(clips=clips, clip_seconds=seconds, rounds=rounds, threads=threads))
    write(report, output_dir)
    return report


def make_report(model: str, machine: dict, systems: list[System], times: dict, scores: dict, info: dict,
                peaks: dict, skipped: dict, export_s: float, settings: dict) -> dict:
    baseline = next((s.name for s in systems if s.backend == "funasr"), None)
    reference = scores.get("torch exact")
    rows = []
    for system in systems:
        t, row = times[system.name], {"system": system.name, "backend": system.backend,
                                      "execution": info[system.name]["execution"]}
        row |= {"median_s": float(np.median(t)), "min_s": float(t.min()), "clips_per_s": float(1 / np.median(t)),
                "speedup_vs_funasr": float(np.median(times[baseline] / t)) if baseline else None,
                "startup_s": info[system.name]["startup_s"], "peak_rss_mib": peaks[system.name]}
        if reference is not None:
            row["label_agreement"] = float(np.mean([a.argmax() == b.argmax()
                                                    for a, b in zip(scores[system.name], reference)]))
            row["max_score_error"] = float(max(np.abs(a - b).max() for a, b in zip(scores[system.name], reference)))
        rows.append(row)
    return {"model": model, "machine": machine, **settings, "baseline": baseline, "reference": "torch exact",
            "export_s": export_s, "skipped": skipped, "rows": rows}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# emoserve bench: backends × precisions vs FunASR — {report['model']} (random weights), "
             f"{report['clips']} × {report['clip_seconds']:g} s clips × {report['rounds']} rounds", "",
             f"{m['date']} · {m['cpu_features']} · {m['vendor']} · {m['cpus']} CPUs, {report['threads']} threads · "
             f"torch {m['torch']} · load average before/after {m['load_average_before'][0]:.2f} / "
             f"{m['load_average_after'][0]:.2f}", "",
             f"Speed-up: median of per-clip paired ratios to {report['baseline'] or '(no FunASR)'}. Accuracy: "
             "against torch exact fp32 on the same clips. Start-up: load from the model cache + first inference "
             f"(the one-off ONNX export took {report['export_s']:.0f} s before). Peak RSS: the system's own process.",
             "", "| system | execution | speed-up vs FunASR | clips/s | median s/clip | label agreement | "
                 "max score error | peak RSS MiB | start-up s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        speedup = f"{r['speedup_vs_funasr']:.2f}×" if r["speedup_vs_funasr"] else "-"
        accuracy = f"{r['label_agreement']:.0%} | {r['max_score_error']:.2g}" if "label_agreement" in r else "- | -"
        lines.append(f"| {r['system']} | {r['execution']} | {speedup} | {r['clips_per_s']:.2f} | "
                     f"{r['median_s']:.3f} | {accuracy} | {r['peak_rss_mib']:.0f} | {r['startup_s']:.1f} |")
    if report["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


def write(report: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"bench-{report['model'].replace(':', '-')}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    report["files"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
