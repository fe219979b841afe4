"""The exported graph in OpenVINO's CPU plugin, read from the ONNX file (no separate conversion step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov


class OpenVinoGraph:
    def __init__(self, path: Path, inference_precision: str, threads: int):
        """`inference_precision` "f32" or "bf16": said explicitly, since the CPU plugin picks bf16 by itself
        on AMX CPUs, which would make the exact path inexact there."""
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads}
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.outputs = tuple(output.get_any_name() for output in self.model.outputs)

    def run(self, waveforms: np.ndarray, num_samples: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One infer request per call: a request is not shared between threads."""
        results = self.model.create_infer_request().infer({"waveforms": waveforms, "num_samples": num_samples})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {name: by_name[name] for name in names}
