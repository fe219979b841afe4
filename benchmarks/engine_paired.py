"""Paired speed comparison for busy machines: FunASR and each execution mode, back to back, clip by clip.

`engine_bench.py` measures each system in turn, so on a machine shared with other work a
burst of load can land on one system and not the other. (On a busy machine a system with more
threads also takes a larger share of the cores: FunASR's 4 threads on 2 cores, slower when the
machine is quiet, win under load. Take figures on a quiet machine.) Here every clip runs through every
system in immediate succession, rounds are repeated, and the speed-up is the median of the
per-clip ratios, which drifts in the background load cancel out of. It times the model call
alone (one clip, no queue): the forward pass and whatever each system does around it.

    PYTHONPATH=src python benchmarks/engine_paired.py                     # random plus_large, 5 s clips
    PYTHONPATH=src python benchmarks/engine_paired.py --seconds 10 --rounds 5

Writes benchmarks/results/paired-<date>.json and .md.
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
from pathlib import Path

import numpy as np
import torch

from emoserve.cli.bench import machine_info, synthetic_clip
from emoserve.inference.emotion_model import RANDOM_CONFIGS, EmotionModel
from emoserve.model.checkpoint import random_state_dict
from emoserve.testing import save_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:large", help="random:large|base|tiny")
    parser.add_argument("--modes", default="fp32,int8,bf16", help="engine modes: fp32, int8, bf16, compile")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clips = [synthetic_clip(rng, args.seconds) for _ in range(args.clips)]
    config = RANDOM_CONFIGS[args.model.split(":", 1)[1]]
    systems = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(Path(tmp) / "model", config, random_state_dict(config, 0))
        logging.getLogger().setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from funasr import AutoModel

            # generate() resets torch's thread count to the model's ncpu on every call: one model per setting
            funasr = {ncpu: AutoModel(model=str(model_dir), disable_update=True, device="cpu", disable_pbar=True,
                                      log_level="ERROR", ncpu=ncpu) for ncpu in (4, args.threads)}

        def run_funasr(clip, ncpu):
            with contextlib.redirect_stdout(io.StringIO()):
                funasr[ncpu].generate(clip, granularity="utterance", extract_embedding=False, disable_pbar=True)

        for ncpu in funasr:  # FunASR's own setting (ncpu=4), then ours
            systems[f"funasr (ncpu={ncpu})"] = lambda clip, ncpu=ncpu: run_funasr(clip, ncpu)
        for mode in args.modes.split(","):
            model = EmotionModel.from_pretrained(str(model_dir), device="cpu", cache_dir=Path(tmp) / "cache",
                                                 dtype="bfloat16" if mode == "bf16" else "float32",
                                                 quantize=mode == "int8", compile=mode == "compile")

            def run_model(clip, model=model):
                torch.set_num_threads(args.threads)
                model.predict([clip])

            systems[f"emoserve {mode}"] = run_model

        for run in systems.values():  # first calls allocate, pick kernels, compile
            run(clips[0])
            run(clips[0])
        times = {name: np.zeros((args.rounds, len(clips))) for name in systems}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for c, clip in enumerate(clips):
                for name, run in systems.items():
                    started = time.perf_counter()
                    run(clip)
                    times[name][r, c] = time.perf_counter() - started
    baseline = times["funasr (ncpu=4)"]
    rows = [{"system": name, "min_s": float(t.min()), "median_s": float(np.median(t)),
             "speedup_vs_funasr": float(np.median(baseline / t))} for name, t in times.items()]
    info = machine_info("cpu") | {"load_average_after": os.getloadavg(), "load_average_before": load_before}
    report = {"machine": info, "model": args.model, "clip_seconds": args.seconds, "clips": args.clips,
              "rounds": args.rounds, "threads": args.threads, "rows": rows}
    title = f"# Paired: FunASR vs emoserve, {args.model}, {args.clips} × {args.seconds:g} s × {args.rounds} rounds"
    lines = [title,
             "", f"{info['date']} · {info['cpu']} · {info['cpus']} CPUs ({info['cpu_capability']}) · torch "
             f"{info['torch']} · load average before/after {load_before[0]:.2f} / {info['load_average_after'][0]:.2f}",
             "", "| system | min s/clip | median s/clip | speed-up vs FunASR (median of paired ratios) |",
             "|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['speedup_vs_funasr']:.2f}× |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"paired-{args.model.replace(':', '-')}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
