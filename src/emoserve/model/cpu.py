"""What this CPU can do, and so which kernels run the network fastest on it.

The same fp32 arithmetic runs at very different speeds depending on who computes it:

- **MKL** (torch's fp32 `Linear` on x86) uses its AVX-512 kernels on Intel CPUs only; on an AMD
  CPU with AVX-512 (Zen 4, Zen 5) it runs AVX2 code. **oneDNN** uses AVX-512 on any vendor: on
  an AMD EPYC Zen 5, the transformer's matmuls ran ~1.7× faster through oneDNN. Where neither
  has AVX-512 (e.g. Zen 3, AVX2 only), MKL is the faster of the two (~80 vs ~62 GFLOP/s per
  core on an EPYC Zen 3 here), and on Intel CPUs MKL is Intel's own tuned path.
- **bf16** is fast only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere it is
  emulated, many times slower than fp32.
- **int8** with VNNI (AVX512-VNNI, AVX-VNNI, AMX) accumulates 8-bit products in 32 bits
  directly; without it, AVX2's 8-bit multiply-add saturates in 16 bits, so activations are
  quantized to 7 bits there (as fbgemm's `reduce_range` does).

Features come from /proc/cpuinfo (vendor and ISA flags, as the kernel reports them) and from
`torch.backends.cpu.get_cpu_capability()` (the ISA torch's own kernels dispatch to).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    vendor: str  # "GenuineIntel", "AuthenticAMD", ... ("" when unknown)
    model_name: str
    flags: frozenset[str]
    capability: str  # torch's dispatch ISA: "AVX512", "AVX2", "DEFAULT", ...

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware: AVX512-BF16 or AMX (oneDNN then runs them ~2–3× faster than fp32)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    @property
    def vnni(self) -> bool:
        """8-bit dot products accumulated in 32 bits: full-range int8 activations do not saturate."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def fp32_linear(self) -> str:
        """Who runs fp32 matmuls fastest here: "onednn" (AMD with AVX-512), else "mkl" (torch's default)."""
        if self.avx512 and self.vendor != "GenuineIntel" and torch.backends.mkldnn.is_available():
            return "onednn"
        return "mkl" if torch.backends.mkl.is_available() else "default"

    @property
    def int8_linear(self) -> bool:
        """oneDNN has int8 matmul kernels for this CPU (x86 with AVX2 or better)."""
        return self.capability in ("AVX2", "AVX512") and torch.backends.mkldnn.is_available()

    def describe(self) -> str:
        isa = [name for name, present in (("AVX-512", self.avx512), ("AVX512-BF16/AMX", self.native_bf16),
                                          ("VNNI", self.vnni)) if present]
        return f"{self.model_name or platform.processor() or 'unknown CPU'} ({', '.join(isa) or self.capability})"


def parse_cpuinfo(text: str) -> tuple[str, str, frozenset[str]]:
    """(vendor, model name, flags) of the first processor in /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("vendor_id", ""), fields.get("model name", ""), frozenset(fields.get("flags", "").split())


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; a container's or Ray's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once)."""
    text = CPUINFO.read_text(errors="replace") if CPUINFO.exists() else ""
    vendor, model_name, flags = parse_cpuinfo(text)
    if not flags:  # no /proc/cpuinfo (macOS, Windows): the same flags from torch's own CPU probe
        probes = {"avx512f": torch.cpu._is_avx512_supported, "avx512_bf16": torch.cpu._is_avx512_bf16_supported,
                  "amx_tile": torch.cpu._is_amx_tile_supported, "avx512_vnni": torch.cpu._is_vnni_supported}
        flags = frozenset(flag for flag, probe in probes.items() if probe())
    return CpuFeatures(vendor, model_name, flags, torch.backends.cpu.get_cpu_capability())
