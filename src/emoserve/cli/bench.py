"""`emoserve bench --load`: the engine's throughput and latency against FunASR's own loop, side by side (the
paired backends × precisions table, `emoserve bench` without --load, is in bench_paired.py).

Both run the same random-weight model (written once in the official format, so FunASR loads
the very same tensors) on the same clips, on the same machine, in the same run:

- FunASR: `AutoModel.generate`, one clip at a time, as FunASR serves (its own thread setting).
- the engine, per execution mode (exact fp32, fp32 + torch.compile, int8 dynamic, bf16), with
  closed-loop clients at each concurrency: every client sends its next clip when the last returns.

Workloads: a fixed set of 5 s clips, and clips of 2-10 s. Reported per run: ×realtime (audio
seconds per wall second), clips/s, p50/p95/p99 latency, peak memory; the fast modes' accuracy
against exact fp32 (label agreement, score and embedding error). Written to JSON and markdown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import platform
import resource
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..model.config import SAMPLE_RATE, Emotion2vecConfig
from .common import clean_errors, console, require_server

MODES = ("fp32", "compile", "int8", "bf16")
# Dense bf16 peak, TFLOP/s, for the MFU column on known GPUs (the CPU's is not reported).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10": 125.0, "L4": 121.0, "L40": 181.0}


@dataclass
class Workload:
    name: str
    clips: list[np.ndarray]

    @property
    def audio_seconds(self) -> float:
        return sum(len(c) for c in self.clips) / SAMPLE_RATE


@dataclass
class Run:
    """One measured configuration: who ran, on what, how fast."""

    system: str  # "funasr" or "engine"
    mode: str
    workload: str
    concurrency: int
    requests: int
    audio_s: float
    wall_s: float
    latencies_s: list[float] = field(repr=False)
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    tflops: float | None = None

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s) * 1000
        row = {k: v for k, v in asdict(self).items() if k != "latencies_s"}
        row.update(x_realtime=self.audio_s / self.wall_s, clips_per_s=self.requests / self.wall_s,
                   p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                   p99_ms=float(np.percentile(lat, 99)))
        return row


class PeakMemory:
    """Peak resident memory of this process while a block runs (sampled), and the GPU's peak."""

    def __init__(self, device: str):
        self.device = device
        self.peak_rss = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_rss = max(self.peak_rss, self.rss())

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss())

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss / 2**20

    @property
    def peak_gpu_mib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if self.device.startswith("cuda") else None


def synthetic_clip(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voiced-speech-like signal: a gliding harmonic tone, syllable-rate envelope, and noise.

    Varied per clip, so even a random-weight model gives varied labels and the accuracy columns
    compare something. Speed does not depend on the content.
    """
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t) ** 2
    signal = rng.uniform(0.05, 0.4) * envelope * voiced + rng.uniform(0.001, 0.05) * rng.standard_normal(n)
    return signal.astype(np.float32)


def make_workloads(count: int, fixed_s: float, low_s: float, high_s: float, seed: int = 0) -> list[Workload]:
    rng = np.random.default_rng(seed)
    fixed = [synthetic_clip(rng, fixed_s) for _ in range(count)]
    mixed = [synthetic_clip(rng, s) for s in rng.uniform(low_s, high_s, count)]
    return [Workload(f"{fixed_s:g} s", fixed), Workload(f"{low_s:g}-{high_s:g} s", mixed)]


def matmul_flops(config: Emotion2vecConfig, samples: int) -> float:
    """Multiply-add FLOPs of one clip's forward pass (convs, linears, attention); norms ignored."""
    flops, length, channels = 0.0, samples, 1
    for out_channels, kernel, stride in config.feature_encoder_spec:
        length = (length - kernel) // stride + 1
        flops += 2 * length * out_channels * channels * kernel
        channels = out_channels
    d, frames = config.embed_dim, length
    tokens = frames + config.num_extra_tokens
    flops += 2 * frames * channels * d  # feature projection
    flops += config.conv_pos_depth * 2 * frames * d * (d // config.conv_pos_groups) * config.conv_pos_kernel
    hidden = int(d * config.mlp_ratio)
    per_block = 2 * tokens * d * (3 * d + d + 2 * hidden) + 4 * tokens * tokens * d
    return flops + config.num_blocks * per_block


async def closed_loop(engine, clips: list[np.ndarray], concurrency: int, requests: int,
                      outputs: dict[int, object] | None) -> tuple[float, list[float]]:
    """`concurrency` clients, each sending its next clip as soon as the last one returned."""
    latencies: list[float] = []
    next_request = 0

    async def client() -> None:
        nonlocal next_request
        while next_request < requests:
            index = next_request
            next_request += 1
            started = time.perf_counter()
            result = await engine.submit(clips[index % len(clips)], return_embedding=outputs is not None)
            latencies.append(time.perf_counter() - started)
            if outputs is not None and index < len(clips):
                outputs[index] = result

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def load_mode(model_dir: Path, mode: str, device: str, cache: Path):
    from ..inference.emotion_model import EmotionModel

    return EmotionModel.from_pretrained(str(model_dir), device=device,
                                        dtype="bfloat16" if mode == "bf16" else "float32", cache_dir=cache,
                                        quantize=mode == "int8", compile=mode == "compile")


def bench_engine(model_dir: Path, mode: str, device: str, cache: Path, workloads: list[Workload],
                 concurrencies: list[int], threads: int | None) -> tuple[list[Run], dict, dict[str, dict]]:
    """Every workload × concurrency for one mode; also each clip's result (concurrency 1) for accuracy."""
    from ..inference.engine import Engine

    runs: list[Run] = []
    results: dict[str, dict] = {}

    async def measure(model) -> dict:
        async with Engine(model, threads=threads) as engine:  # start() warms up the common shapes
            for workload in workloads:
                outputs: dict[int, object] = {}
                for concurrency in concurrencies:
                    requests = max(len(workload.clips), concurrency)
                    with PeakMemory(device) as memory:
                        wall, latencies = await closed_loop(engine, workload.clips, concurrency, requests,
                                                            outputs if concurrency == concurrencies[0] else None)
                    audio = sum(len(workload.clips[i % len(workload.clips)]) for i in range(requests)) / SAMPLE_RATE
                    flops = sum(matmul_flops(model.config, len(workload.clips[i % len(workload.clips)]))
                                for i in range(requests))
                    runs.append(Run("engine", mode, workload.name, concurrency, requests, audio, wall, latencies,
                                    memory.peak_rss_mib, memory.peak_gpu_mib, flops / wall / 1e12))
                    console.print(f"  {mode:8s} {workload.name:8s} c={concurrency:<3d} "
                                  f"{audio / wall:7.1f}× realtime  p50 {np.median(latencies) * 1000:8.1f} ms")
                results[workload.name] = outputs
            return {"threads": engine.threads, "max_batch_size": engine.max_batch_size,
                    "max_batch_samples": engine.max_batch_samples, "stats": asdict(engine.stats)}

    started = time.perf_counter()
    model = load_mode(model_dir, mode, device, cache)
    engine_info = asyncio.run(measure(model))
    engine_info.update(model.info.to_dict(), load_and_warmup_s=time.perf_counter() - started)
    engine_info.pop("labels")
    del model
    return runs, engine_info, results


def bench_funasr(model_dir: Path, device: str, workloads: list[Workload], ncpu: int | None
                 ) -> tuple[list[Run], dict[str, list]]:
    """FunASR's AutoModel.generate, one clip at a time (how FunASR runs emotion2vec)."""
    import torch

    logging.getLogger().setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from funasr import AutoModel

        options = {"ncpu": ncpu} if ncpu else {}  # FunASR's default is ncpu=4 (torch.set_num_threads(4))
        with PeakMemory(device) as memory:
            model = AutoModel(model=str(model_dir), disable_update=True, device=device, disable_pbar=True,
                              log_level="ERROR", **options)
    threads = torch.get_num_threads()
    runs, scores = [], {}
    for workload in workloads:
        latencies, clip_scores = [], []
        with contextlib.redirect_stdout(io.StringIO()):
            model.generate(workload.clips[0], granularity="utterance", extract_embedding=False, disable_pbar=True)
            with PeakMemory(device) as run_memory:
                started = time.perf_counter()
                for clip in workload.clips:
                    t = time.perf_counter()
                    out = model.generate(clip, granularity="utterance", extract_embedding=False, disable_pbar=True)
                    latencies.append(time.perf_counter() - t)
                    clip_scores.append(out[0]["scores"])
                wall = time.perf_counter() - started
        name = f"ncpu={ncpu or 4}"
        runs.append(Run("funasr", name, workload.name, 1, len(workload.clips), workload.audio_seconds, wall,
                        latencies, max(memory.peak_rss_mib, run_memory.peak_rss_mib), run_memory.peak_gpu_mib))
        scores[workload.name] = clip_scores
        console.print(f"  funasr   {workload.name:8s} {name} {workload.audio_seconds / wall:7.1f}× realtime  "
                      f"p50 {np.median(latencies) * 1000:8.1f} ms  ({threads} torch threads)")
    del model
    return runs, scores


def isolated(function, *args):
    """Run one system in a fresh process: its own memory peak, threads and allocator, nothing left over.

    Two torch thread pools in one process (FunASR's, then the engine's) slow each other down on
    few cores, and a mode's memory would hide in the next one's peak.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def accuracy(reference: dict, candidate: dict) -> dict:
    """A fast mode against exact fp32, clip by clip: label agreement, score and embedding error."""
    agree, score_err, emb_err = [], [], []
    for workload, outputs in reference.items():
        for index, ref in outputs.items():
            other = candidate[workload][index]
            agree.append(ref.emotion == other.emotion)
            ref_scores, scores = np.array(list(ref.utterance_scores.values())), \
                np.array(list(other.utterance_scores.values()))
            score_err.append(np.abs(ref_scores - scores).max())
            emb_err.append(np.abs(ref.embedding - other.embedding).max() / np.abs(ref.embedding).max())
    return {"clips": len(agree), "label_agreement": float(np.mean(agree)), "max_score_error": float(max(score_err)),
            "mean_score_error": float(np.mean(score_err)), "max_embedding_rel_error": float(max(emb_err))}


def funasr_agreement(funasr_scores: dict[str, list], reference: dict) -> dict:
    """Our exact fp32 engine against FunASR on the benchmark clips: a parity check of what was timed."""
    diffs = [np.abs(np.array(funasr_scores[w][i]) - np.array(list(r.utterance_scores.values()))).max()
             for w, outputs in reference.items() for i, r in outputs.items()]
    return {"clips": len(diffs), "max_score_diff": float(max(diffs))}


def machine_info(device: str) -> dict:
    import torch

    from ..model.cpu import cpu_features, usable_cpus

    cpu = cpu_features().model_name or platform.processor() or platform.machine()
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cpus": usable_cpus(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device,
            "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def gpu_peak_tflops(name: str | None) -> float | None:
    if not name:
        return None
    return next((peak for key, peak in GPU_PEAK_TFLOPS.items() if key in name), None)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# emoserve engine benchmark — {report['model']} ({report['weights']} weights)", "",
             f"{m['date']} · {m.get('gpu') or m['cpu']} · {m['cpus']} CPUs ({m['cpu_capability']}) · "
             f"torch {m['torch']} · device {m['device']} · load average before/after "
             f"{fmt_load(m['load_average_before'])} / {fmt_load(m.get('load_average_after'))}", ""]
    engines = report.get("engines", {})
    if engines:
        lines += ["Engine modes: " + "; ".join(
            f"{mode} = {e['dtype']}{' + ' + e['quantization'] if e.get('quantization') else ''}"
            f"{' + torch.compile' if mode == 'compile' else ''}, {e['threads']} threads, batches ≤ "
            f"{e['max_batch_size']}" for mode, e in engines.items()), ""]
    baseline = {r["workload"]: r["x_realtime"] for r in report["runs"]
                if r["system"] == "funasr" and r["mode"] == report.get("baseline_mode")}
    peak = gpu_peak_tflops(m.get("gpu"))
    header = "| system | mode | workload | concurrency | ×realtime | clips/s | vs FunASR | p50 ms | p95 ms | p99 ms " \
             "| peak RSS MiB |"
    lines += [header + (" TFLOP/s | MFU |" if peak else ""), "|" + "---|" * (11 + (2 if peak else 0))]
    for r in report["runs"]:
        speedup = r["x_realtime"] / baseline[r["workload"]] if r["workload"] in baseline else None
        row = (f"| {r['system']} | {r['mode']} | {r['workload']} | {r['concurrency']} | {r['x_realtime']:.2f} | "
               f"{r['clips_per_s']:.2f} | {f'{speedup:.2f}×' if speedup else '-'} | {r['p50_ms']:.0f} | "
               f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['peak_rss_mib']:.0f} |")
        if peak:
            tflops = r.get("tflops")
            row += f" {tflops:.1f} | {100 * tflops / peak:.0f}% |" if tflops else " - | - |"
        lines.append(row)
    if report.get("accuracy"):
        lines += ["", "Accuracy against exact fp32 (same clips):", "",
                  "| mode | clips | label agreement | max score error | mean score error | max embedding rel. error |",
                  "|---|---|---|---|---|---|"]
        for mode, a in report["accuracy"].items():
            lines.append(f"| {mode} | {a['clips']} | {100 * a['label_agreement']:.1f}% | {a['max_score_error']:.4f} | "
                         f"{a['mean_score_error']:.4f} | {a['max_embedding_rel_error']:.4f} |")
    if report.get("funasr_agreement"):
        a = report["funasr_agreement"]
        lines += ["", f"Exact fp32 engine vs FunASR on the timed clips: max score difference "
                      f"{a['max_score_diff']:.1e} over {a['clips']} clips."]
    return "\n".join(lines) + "\n"


def fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "-"


def run_bench(model: str, device: str, modes: list[str], clips: int, concurrencies: list[int], fixed_s: float,
              low_s: float, high_s: float, baseline: bool, baseline_ncpu: list[int | None], threads: int | None,
              output_dir: Path, seed: int = 0) -> dict:
    """The whole benchmark; returns the report and writes it as JSON and markdown to `output_dir`."""
    from ..config import get_settings
    from ..inference.emotion_model import RANDOM_CONFIGS, resolve_device
    from ..model import hub
    from ..model.checkpoint import load_model_dir, random_state_dict
    from ..testing import save_model_dir

    device = str(resolve_device(device))
    model_config = get_settings().model
    workloads = make_workloads(clips, fixed_s, low_s, high_s, seed)
    report: dict = {"model": model, "machine": machine_info(device), "modes": modes,
                    "workloads": {w.name: {"clips": len(w.clips), "audio_s": w.audio_seconds} for w in workloads},
                    "runs": [], "engines": {}}
    with tempfile.TemporaryDirectory(prefix="emoserve-bench-") as tmp:
        if model.startswith("random:"):
            config = RANDOM_CONFIGS[model.split(":", 1)[1]]
            model_dir = save_model_dir(Path(tmp) / "model", config, random_state_dict(config, seed))
            report["weights"] = "random"
        else:
            model_dir = hub.resolve(model, model_config.cache, model_config.source, download=False)
            config = load_model_dir(model_dir, Path(tmp)).config
            report["weights"] = "pretrained"
        cache = Path(tmp) / "cache"
        funasr_scores: dict[str, dict] = {}
        if baseline and importlib.util.find_spec("funasr") is None:
            console.print("FunASR is not installed (pip install funasr==1.4.16 --no-deps): no baseline")
            baseline = False
        if baseline:
            for ncpu in baseline_ncpu:
                console.print(f"FunASR AutoModel.generate (ncpu={ncpu or 'default'}) ...")
                runs, scores = isolated(bench_funasr, model_dir, device, workloads, ncpu)
                report["runs"] += [r.summary() for r in runs]
                funasr_scores.setdefault("scores", scores)
            report["baseline_mode"] = f"ncpu={baseline_ncpu[0] or 4}"
        outputs = {}
        for mode in modes:
            console.print(f"engine, {mode} ...")
            runs, info, outputs[mode] = isolated(bench_engine, model_dir, mode, device, cache, workloads,
                                                 concurrencies, threads)
            report["runs"] += [r.summary() for r in runs]
            report["engines"][mode] = info
    if "fp32" in outputs:
        report["accuracy"] = {m: accuracy(outputs["fp32"], o) for m, o in outputs.items() if m != "fp32"}
        if funasr_scores:
            report["funasr_agreement"] = funasr_agreement(funasr_scores["scores"], outputs["fp32"])
    report["machine"]["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"engine-{device.split(':')[0]}-{model.replace(':', '-').replace('/', '_')}-{stamp}"
    (output_dir / f"{name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (output_dir / f"{name}.md").write_text(markdown(report))
    report["files"] = [str(output_dir / f"{name}.json"), str(output_dir / f"{name}.md")]
    return report


def bench(
    quick: Annotated[bool, typer.Option(help="seconds-long smoke run: tiny model, few short clips")] = False,
    model: Annotated[str, typer.Option(help="random:large|base|tiny; --load also a model name (cached) or a dir")]
    = "random:large",
    load: Annotated[bool, typer.Option("--load", help="the closed-loop engine run instead: --modes × --concurrency "
                                                      "on two workloads")] = False,
    systems: Annotated[str, typer.Option(help="paired rows to run, comma-separated names (e.g. 'torch exact,"
                                              "onnxruntime int8'); default: all this machine has")] = "",
    rounds: Annotated[int, typer.Option(help="paired: times every clip goes through every system")] = 3,
    seconds: Annotated[float, typer.Option(help="paired: clip length")] = 5.0,
    device: Annotated[str, typer.Option(help="--load: auto, cpu, cuda (the paired run is on the CPU)")] = "auto",
    modes: Annotated[str, typer.Option(help=f"--load: engine modes, comma-separated, of {', '.join(MODES)}")] = "",
    clips: Annotated[int | None, typer.Option(help="clips (default 6 paired, 32 per workload with --load)")] = None,
    concurrency: Annotated[str, typer.Option(help="--load: client counts, comma-separated")] = "1,8,64",
    baseline: Annotated[bool, typer.Option(help="measure FunASR's AutoModel.generate on the same clips")] = True,
    baseline_ncpu: Annotated[str, typer.Option(help="FunASR ncpu values (its default is 4), comma-separated; the "
                                                    "paired run takes the first")] = "4,2",
    threads: Annotated[int | None, typer.Option(help="compute threads (default: the CPUs available)")] = None,
    output_dir: Annotated[Path, typer.Option(help="where the JSON and markdown go")] = Path("benchmarks/results"),
) -> None:
    """Backends × precisions against FunASR, paired clip by clip (or, with --load, the engine's throughput and
    latency under concurrent clients); writes JSON + markdown."""
    with clean_errors():
        require_server("emoserve bench")
    ncpu = [int(n) if n.strip() != "default" else None for n in baseline_ncpu.split(",") if n.strip()]
    if not load:
        from ..model.cpu import usable_cpus
        from .bench_paired import markdown as paired_markdown
        from .bench_paired import run_paired

        if quick:
            model, clips, seconds, rounds = ("random:tiny" if model == "random:large" else model), clips or 3, 1.0, 1
        if not model.startswith("random:"):
            raise typer.BadParameter("the paired run takes random:large|base|tiny (FunASR loads the same files)")
        with clean_errors():
            report = run_paired(model, clips or 6, seconds, rounds, threads or usable_cpus(),
                                (ncpu[0] or 4) if baseline else 0,
                                [s.strip() for s in systems.split(",") if s.strip()] or None, output_dir)
        typer.echo(paired_markdown(report))
        console.print(f"written: {', '.join(report['files'])}")
        return
    import torch

    clips = clips or 32
    if not modes:
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        modes = "fp32,int8" if quick else ("bf16,fp32" if cuda else "fp32,compile,int8,bf16")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = set(mode_list) - set(MODES)
    if unknown:
        raise typer.BadParameter(f"unknown modes {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if quick:
        model, clips, fixed_s, low_s, high_s = ("random:tiny" if model == "random:large" else model), min(clips, 6), \
            1.0, 0.5, 2.0
        concurrency = "1,8" if concurrency == "1,8,64" else concurrency
        baseline_ncpu = "2" if baseline_ncpu == "4,2" else baseline_ncpu
    else:
        fixed_s, low_s, high_s = 5.0, 2.0, 10.0
    ncpu = [int(n) if n.strip() != "default" else None for n in baseline_ncpu.split(",") if n.strip()]
    with clean_errors():
        report = run_bench(model, device, mode_list, clips, [int(c) for c in concurrency.split(",")], fixed_s, low_s,
                           high_s, baseline, ncpu, threads, output_dir)
    typer.echo(markdown(report))
    console.print(f"written: {', '.join(report['files'])}")
