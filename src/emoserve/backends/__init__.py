"""Backends: who runs the network's forward pass. `torch` runs `Emotion2vec` itself; `onnxruntime` and
`openvino` run the graph `emoserve export onnx` writes (model/export.py), exported once per checkpoint into
the model cache (`backends.cache`).

Every backend answers the same call, padded 16 kHz waveforms (batch, samples) and each row's `num_samples`
→ the tensors named in docs/onnx.md (`scores`, `embedding`, `frame_scores`, `frame_features`,
`frame_lengths`), so `EmotionModel.predict`, and everything above it (the engine's batching, long files,
streams, the API), is the same whatever the backend.

`plan_graph` resolves `precision = exact | fast` for a graph backend into the file it runs and how:

- **onnxruntime**: exact runs the fp32 graph; fast runs the int8 graph on CPUs (onnxruntime's CPU provider
  has no bf16 MatMul, so int8 is its only faster arithmetic there) and the fp16 graph on CUDA.
- **openvino**: exact runs the fp32 graph with OpenVINO's inference precision held at f32 (its CPU plugin
  would otherwise pick bf16 on AMX CPUs); fast runs the fp32 graph with the bf16 hint on CPUs that compute
  bf16 natively (AMX, AVX512-BF16), and the int8 graph elsewhere.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, get_args

import numpy as np

from ..config import ModelConfig
from ..errors import InvalidParameterError
from ..model.cpu import CpuFeatures, cpu_features, usable_cpus
from ..model.precision import PRECISIONS

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = get_args(ModelConfig.model_fields["backend"].annotation)  # torch first
GRAPH_BACKENDS = BACKENDS[1:]
PACKAGES = {"onnxruntime": ("onnxruntime", "server"), "openvino": ("openvino", "openvino")}  # import, extra
VARIANTS = {"onnxruntime": ("fp32", "int8", "fp16"), "openvino": ("fp32", "int8", "bf16")}


class Graph(Protocol):
    """A loaded exported graph: padded waveforms + num_samples → the named outputs asked for."""

    outputs: tuple[str, ...]  # the graph's output names (docs/onnx.md)

    def run(self, waveforms: np.ndarray, num_samples: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        ...


@dataclass(frozen=True)
class GraphPlan:
    """Which exported file a graph backend runs, on what, computing in what: reported in /v1/models."""

    backend: str  # "onnxruntime" | "openvino"
    variant: str  # what it computes in: "fp32" | "int8" | "fp16" | "bf16"
    device: str  # "cpu" | "cuda"
    reason: str = ""

    @property
    def graph(self) -> str:
        """The exported file's precision (`export_onnx`): OpenVINO's bf16 is a hint over the fp32 graph."""
        return "fp32" if self.variant == "bf16" and self.backend == "openvino" else self.variant

    @property
    def precision(self) -> str:
        return "exact" if self.variant == "fp32" else "fast"

    @property
    def execution(self) -> str:
        if self.backend == "onnxruntime":
            provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
            return f"onnxruntime {self.variant} graph, {provider}"
        hint = "bf16" if self.variant == "bf16" else "f32"
        return f"openvino {self.graph} graph, CPU, inference precision {hint}"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def require(backend: str) -> None:
    """A missing backend package is a clear error that names the extra to install."""
    package, extra = PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        raise InvalidParameterError(f"backend {backend} needs the {package} package: pip install 'emoserve[{extra}]'")


def plan_graph(backend: str, precision: str, device: str, cpu: CpuFeatures | None = None,
               variant: str | None = None) -> GraphPlan:
    """What `precision` (exact | fast) runs as on `backend` and `device` ("cpu" or "cuda"), and why; `variant`
    (one of the backend's `VARIANTS`) overrides the choice."""
    if precision not in PRECISIONS:
        raise InvalidParameterError(f"precision must be {' or '.join(PRECISIONS)}; got {precision!r}")
    if backend == "openvino" and device != "cpu":
        raise InvalidParameterError("the openvino backend runs on the CPU here: use device cpu (or backend "
                                    "onnxruntime on CUDA)")
    if variant is not None:
        if variant not in VARIANTS[backend]:
            raise InvalidParameterError(f"{backend} variants are {', '.join(VARIANTS[backend])}; got {variant!r}")
        return GraphPlan(backend, variant, device, f"variant {variant} asked for")
    if precision == "exact":
        return GraphPlan(backend, "fp32", device, "exact asked for")
    if backend == "onnxruntime":
        if device == "cuda":
            return GraphPlan(backend, "fp16", device, "half-precision tensor cores")
        return GraphPlan(backend, "int8", device, "onnxruntime's CPU provider has no bf16 MatMul; int8 MatMuls are "
                                                  "its faster arithmetic")
    cpu = cpu or cpu_features()
    if cpu.native_bf16:
        return GraphPlan(backend, "bf16", device, f"the CPU computes bf16 natively ({cpu.describe()})")
    return GraphPlan(backend, "int8", device, f"no native bf16 on {cpu.describe()}: int8 MatMuls")


def graph_device(backend: str, device: str) -> str:
    """"cpu" or "cuda": where a graph backend runs for the `device` setting (auto: CUDA when it can use it)."""
    if device == "cpu" or backend == "openvino" and device == "auto":
        return "cpu"
    require(backend)
    cuda = backend == "onnxruntime" and "CUDAExecutionProvider" in cuda_providers()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if not device.startswith("cuda") or not cuda:
        raise InvalidParameterError(f"device {device} with backend {backend}: "
                                    + ("install onnxruntime-gpu for CUDA" if backend == "onnxruntime"
                                       else "openvino runs on the CPU here"))
    return "cuda"


def cuda_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def open_graph(plan: GraphPlan, path: Path, threads: int | None = None) -> Graph:
    """The exported file at `path`, loaded by the plan's backend with `threads` compute threads (the engine's
    `EMOSERVE_THREADS`; default: one per CPU this process may use, as the engine gives torch)."""
    require(plan.backend)
    threads = threads or usable_cpus()
    if plan.backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeGraph

        return OnnxRuntimeGraph(path, plan.device, threads)
    from .openvino import OpenVinoGraph

    return OpenVinoGraph(path, "bf16" if plan.variant == "bf16" else "f32", threads)
