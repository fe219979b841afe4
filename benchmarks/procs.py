"""Process helpers the benchmark scripts share: a free port, a server's CPU time and memory (Linux /proc),
and the CPU model results are named by."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads): steadier than wall time on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (resident peak) of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def cpu_model() -> str:
    """The CPU's model name, as the engine's kernel choice reads it (emoserve.model.cpu)."""
    from emoserve.model.cpu import cpu_features  # torch loads with it: only when a result is written

    return cpu_features().model_name or platform.processor()
