"""Paired speed and accuracy for busy machines: FunASR, emoserve's precisions and ONNX Runtime, clip by clip.

`engine_bench.py` measures each system in turn, so on a machine shared with other work a
burst of load can land on one system and not the other. (On a busy machine a system with more
threads also takes a larger share of the cores: FunASR's 4 threads on 2 cores, slower when the
machine is quiet, win under load. Take figures on a quiet machine.) Here every clip runs through every
system in immediate succession, rounds are repeated, and the speed-up is the median of the
per-clip ratios, which drifts in the background load cancel out of. It times the model call
alone (one clip, no queue): the forward pass and whatever each system does around it.

Systems: FunASR `generate` (ncpu=4, its default, and ncpu=--threads); emoserve per `--modes`
(`exact`, `fast`: the precision switch as it resolves on this machine; `int8`, `bf16`: forced;
`compile`); ONNX Runtime per `--onnx` (`fp32`, `int8`, `fp16`, `bf16`: `emoserve export onnx
--precision`). Accuracy of every system against emoserve exact fp32 on the same clips: label
agreement and max score error. The report names the CPU and what `fast` resolved to.

    PYTHONPATH=src python benchmarks/engine_paired.py                    # random plus_large, 5 s clips
    PYTHONPATH=src python benchmarks/engine_paired.py --onnx fp32,int8 --clips 4 --rounds 2

Writes benchmarks/results/paired-<model>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emoserve.cli.bench import machine_info, synthetic_clip
from emoserve.inference.emotion_model import RANDOM_CONFIGS, EmotionModel
from emoserve.model.checkpoint import random_state_dict
from emoserve.model.cpu import cpu_features
from emoserve.model.export import export_onnx
from emoserve.testing import save_model_dir

Run = Callable[[np.ndarray], np.ndarray]  # a clip → its scores over the labels in use


def funasr_systems(model_dir: Path, threads: int) -> dict[str, Run]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from funasr import AutoModel

        # generate() resets torch's thread count to the model's ncpu on every call: one model per setting
        models = {ncpu: AutoModel(model=str(model_dir), disable_update=True, device="cpu", disable_pbar=True,
                                  log_level="ERROR", ncpu=ncpu) for ncpu in dict.fromkeys((4, threads))}
    logging.getLogger().setLevel(logging.WARNING)

    def run(clip: np.ndarray, ncpu: int) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):
            out = models[ncpu].generate(clip, granularity="utterance", extract_embedding=False, disable_pbar=True)
        return np.asarray(out[0]["scores"], dtype=np.float32)

    return {f"FunASR (ncpu={ncpu})": lambda clip, ncpu=ncpu: run(clip, ncpu) for ncpu in models}


def emoserve_system(model_dir: Path, cache: Path, mode: str, threads: int) -> tuple[str, Run]:
    model = EmotionModel.from_pretrained(
        str(model_dir), device="cpu", cache_dir=cache, precision="fast" if mode == "fast" else "exact",
        dtype="bfloat16" if mode == "bf16" else "auto", quantize=mode == "int8", compile=mode == "compile")

    def run(clip: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)
        return model.predict([clip])[0].probs

    return f"emoserve {mode} ({model.plan.execution})", run


def onnx_systems(model_dir: Path, cache: Path, precisions: list[str], directory: Path,
                 threads: int) -> dict[str, Run]:
    import onnxruntime as ort

    model = EmotionModel.from_pretrained(str(model_dir), device="cpu", cache_dir=cache, precision="exact")
    systems = {}
    for precision in precisions:
        path = export_onnx(model, directory / precision, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(clip: np.ndarray, session=session) -> np.ndarray:
            scores, *_ = session.run(["scores"], {"waveforms": clip[None], "num_samples": np.array([len(clip)])})
            return scores[0]

        systems[f"ONNX Runtime {precision}"] = run
    return systems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:large", help="random:large|base|tiny")
    parser.add_argument("--modes", default="exact,fast", help="emoserve: exact, fast, int8, bf16, compile")
    parser.add_argument("--onnx", default="fp32,int8", help="ONNX Runtime: fp32, int8, fp16, bf16 ('' for none)")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-funasr", action="store_true", help="skip FunASR (e.g. where it is not installed)")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clips = [synthetic_clip(rng, args.seconds) for _ in range(args.clips)]
    config = RANDOM_CONFIGS[args.model.split(":", 1)[1]]
    systems: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(Path(tmp) / "model", config, random_state_dict(config, 0))
        cache = Path(tmp) / "cache"
        if not args.no_funasr:
            systems |= funasr_systems(model_dir, args.threads)
        modes = [m for m in args.modes.split(",") if m]
        for mode in dict.fromkeys(["exact", *modes]):  # exact fp32 is the accuracy reference
            name, run = emoserve_system(model_dir, cache, mode, args.threads)
            systems[name] = run
        reference = next(name for name in systems if name.startswith("emoserve exact"))
        systems |= onnx_systems(model_dir, cache, [p for p in args.onnx.split(",") if p], Path(tmp) / "onnx",
                                args.threads)

        for run in systems.values():  # first calls allocate, pick kernels, compile
            run(clips[0])
            run(clips[0])
        times = {name: np.zeros((args.rounds, len(clips))) for name in systems}
        scores: dict[str, list[np.ndarray]] = {name: [] for name in systems}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for c, clip in enumerate(clips):
                for name, run in systems.items():
                    started = time.perf_counter()
                    out = run(clip)
                    times[name][r, c] = time.perf_counter() - started
                    if r == 0:
                        scores[name].append(out)
    report = make_report(args, times, scores, reference, load_before)
    write(report, args)


def make_report(args, times: dict, scores: dict, reference: str, load_before) -> dict:
    baselines = [name for name in times if name.startswith("FunASR")]
    rows = []
    for name, t in times.items():
        exact = scores[reference]
        row = {"system": name, "min_s": float(t.min()), "median_s": float(np.median(t)),
               "label_agreement": float(np.mean([a.argmax() == b.argmax() for a, b in zip(scores[name], exact)])),
               "max_score_error": float(max(np.abs(a - b).max() for a, b in zip(scores[name], exact)))}
        for baseline in baselines:
            row[f"speedup_vs_{baseline}"] = float(np.median(times[baseline] / t))
        rows.append(row)
    cpu = cpu_features()
    info = machine_info("cpu") | {"load_average_after": os.getloadavg(), "load_average_before": load_before,
                                  "cpu_features": cpu.describe(), "vendor": cpu.vendor}
    return {"machine": info, "model": args.model, "clip_seconds": args.seconds, "clips": args.clips,
            "rounds": args.rounds, "threads": args.threads, "reference": reference, "baselines": baselines,
            "rows": rows}


def write(report: dict, args) -> None:
    info, baselines = report["machine"], report["baselines"]
    lines = [f"# Paired: FunASR vs emoserve vs ONNX Runtime, {args.model}, {args.clips} × {args.seconds:g} s × "
             f"{args.rounds} rounds",
             "", f"{info['date']} · {info['cpu_features']} · {info['vendor']} · {info['cpus']} CPUs, "
             f"{args.threads} threads · torch {info['torch']} · load average before/after "
             f"{info['load_average_before'][0]:.2f} / {info['load_average_after'][0]:.2f}",
             "", "Speed-ups are medians of per-clip paired ratios; accuracy is against emoserve exact fp32 "
             "on the same clips.", "",
             "| system | min s/clip | median s/clip | " + " | ".join(f"vs {b}" for b in baselines)
             + " | label agreement | max score error |",
             "|---|---|---|" + "---|" * len(baselines) + "---|---|"]
    for r in report["rows"]:
        speedups = " | ".join(f"{r[f'speedup_vs_{b}']:.2f}×" for b in baselines)
        lines.append(f"| {r['system']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {speedups}"
                     f"{' | ' if baselines else ''}{r['label_agreement']:.0%} | {r['max_score_error']:.2g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"paired-{args.model.replace(':', '-')}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
