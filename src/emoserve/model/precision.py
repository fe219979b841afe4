"""One switch for speed: `precision = exact | fast`, resolved per device and CPU into an execution plan.

- **exact** (the default): fp32, with FunASR parity (scores within 1e-5). On CPU the matmuls go
  to whichever library runs fp32 fastest on this CPU (`cpu.CpuFeatures.fp32_linear`); on CUDA,
  TF32 is kept off so convolutions stay fp32 too.
- **fast**: the fastest path this hardware has that stays close to exact fp32 (label agreement
  and score error are measured by `benchmarks/engine_paired.py`):
  bf16 autocast on GPUs and on CPUs with AMX (Intel Sapphire Rapids and later);
  int8 matmuls and convolutions (`kernels.Int8Linear`, `kernels.Int8Conv`) on other x86 CPUs with
  AVX2 or better: with VNNI (Zen 4/5,
  Ice Lake) int8 beat bf16 (0.154 vs 0.206 s per 5 s clip on an EPYC Zen 5, paired), and on AVX2
  alone it runs the matmuls ~2× faster than fp32; bf16 on CPUs with native bf16 but no int8
  kernels; fp32 where none of these exists (nothing faster to offer).

The older knobs map onto it: an explicit `dtype` (float32, bfloat16, float16) sets the compute
type whatever `precision` says, and `quantize=True` asks for the int8 path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidParameterError
from .cpu import CpuFeatures, cpu_features
from .kernels import Int8Conv, Int8Linear, replace_modules, to_onednn

log = logging.getLogger(__name__)

PRECISIONS = ("exact", "fast")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
COMPUTE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
LINEAR_KERNELS = {"mkl": "MKL matmuls", "onednn": "oneDNN matmuls (1×1 convolutions)", "default": "torch matmuls",
                  "cuda": "CUDA"}


@dataclass(frozen=True)
class ExecutionPlan:
    """How the network runs: reported in ModelInfo (and so in /v1/models)."""

    precision: str  # "exact" when the plan computes in fp32, else "fast"
    compute: str  # "fp32" | "bf16" | "fp16" | "int8"
    dtype: torch.dtype  # the autocast type of everything but int8 matmuls (float32: no autocast)
    linear: str  # fp32 matmul kernels: "mkl" | "onednn" | "default" | "cuda"
    int8_levels: int | None = None  # activation levels of the int8 matmuls: 255 (VNNI) or 127
    reason: str = ""  # why this plan, in words

    @property
    def execution(self) -> str:
        if self.compute == "int8":
            bits = "8" if self.int8_levels == 255 else "7"
            return f"int8 matmuls and convolutions (oneDNN, {bits}-bit dynamic activations), fp32 elsewhere"
        if self.compute == "fp32":
            return f"fp32, {LINEAR_KERNELS[self.linear]}"
        return f"{self.compute} autocast" + (" on CUDA" if self.linear == "cuda" else "")

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        """Around the forward pass: autocast for bf16/fp16; on CUDA fp32, no TF32 convolutions."""
        if self.dtype != torch.float32:
            with torch.autocast(device.type, dtype=self.dtype):
                yield
        elif device.type == "cuda":
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                yield
        else:
            yield


def plan_execution(precision: str, device: torch.device, dtype: str | torch.dtype = "auto", quantize: bool = False,
                   cpu: CpuFeatures | None = None) -> ExecutionPlan:
    """The plan for `precision` on `device` (and, on CPU, on this CPU unless `cpu` is given)."""
    if precision not in PRECISIONS:
        raise InvalidParameterError(f"precision must be {' or '.join(PRECISIONS)}; got {precision!r}")
    if not isinstance(dtype, torch.dtype) and dtype != "auto" and dtype not in DTYPES:
        raise InvalidParameterError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    forced = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(dtype)
    if device.type != "cpu":
        return gpu_plan(precision, forced, quantize)
    cpu = cpu or cpu_features()
    if quantize:
        if forced not in (None, torch.float32):
            raise InvalidParameterError("quantize is the int8 path: leave dtype at auto (or float32)")
        if not cpu.int8_linear:
            raise InvalidParameterError(f"no int8 matmul kernels for this CPU ({cpu.describe()})")
        return int8_plan(cpu, "asked for (quantize)")
    if forced is not None:
        if forced != torch.float32 and not (forced == torch.bfloat16 and cpu.native_bf16):
            log.warning("%s on this CPU (%s) is emulated and many times slower than float32", forced, cpu.describe())
        return ExecutionPlan("exact" if forced == torch.float32 else "fast", COMPUTE_NAMES[forced], forced,
                             cpu.fp32_linear, reason=f"dtype {COMPUTE_NAMES[forced]} asked for")
    if precision == "fast" and cpu.amx and cpu.native_bf16:
        return bf16_plan(cpu, "AMX computes bf16 matmuls several times faster than fp32")
    if precision == "fast" and cpu.int8_linear:
        gain = "VNNI int8 matmuls" if cpu.vnni else "int8 matmuls run ~2× fp32 on AVX2"
        return int8_plan(cpu, f"{gain}, faster than {'bf16' if cpu.native_bf16 else 'fp32'} without AMX")
    if precision == "fast" and cpu.native_bf16:
        return bf16_plan(cpu, "the CPU computes bf16 natively")
    reason = "exact asked for" if precision == "exact" else f"nothing faster than fp32 on {cpu.describe()}"
    return ExecutionPlan("exact", "fp32", torch.float32, cpu.fp32_linear, reason=reason)


def int8_plan(cpu: CpuFeatures, reason: str) -> ExecutionPlan:
    return ExecutionPlan("fast", "int8", torch.float32, cpu.fp32_linear, int8_levels=255 if cpu.vnni else 127,
                         reason=f"{reason} ({cpu.describe()})")


def bf16_plan(cpu: CpuFeatures, reason: str) -> ExecutionPlan:
    return ExecutionPlan("fast", "bf16", torch.bfloat16, cpu.fp32_linear, reason=f"{reason} ({cpu.describe()})")


def gpu_plan(precision: str, forced: torch.dtype | None, quantize: bool) -> ExecutionPlan:
    if quantize:
        raise InvalidParameterError("int8 quantization runs on CPU only; on GPU use precision fast (bf16)")
    if forced is not None:
        return ExecutionPlan("exact" if forced == torch.float32 else "fast", COMPUTE_NAMES[forced], forced, "cuda",
                             reason=f"dtype {COMPUTE_NAMES[forced]} asked for")
    if precision == "exact":
        return ExecutionPlan("exact", "fp32", torch.float32, "cuda", reason="exact asked for")
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return ExecutionPlan("fast", COMPUTE_NAMES[half], half, "cuda", reason="half-precision tensor cores")


def apply_plan(plan: ExecutionPlan, network: nn.Module) -> None:
    """Swap the network's linears (and for int8 its convolutions) for the plan's kernels, in place.

    The head stays as it is. int8 takes the transformer's linears, the extractor's convolutions
    but the first (one input channel: too little work to gain), and the positional convolutions.
    """
    linears = [name for name, module in network.named_modules() if isinstance(module, nn.Linear) and name != "proj"]
    if plan.compute == "int8":
        blocks = [name for name in linears if name.startswith("blocks.")]
        replace_modules(network, blocks, lambda linear: Int8Linear(linear, plan.int8_levels))
        linears = [name for name in linears if name not in blocks]
        convs = [name for name, module in network.named_modules()
                 if isinstance(module, nn.Conv1d) and module.in_channels > 1]
        replace_modules(network, convs, lambda conv: Int8Conv(conv, plan.int8_levels))
    if plan.linear == "onednn" and plan.dtype == torch.float32:
        replace_modules(network, linears, to_onednn)
