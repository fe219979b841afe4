"""The exported graph in ONNX Runtime: CPUExecutionProvider, or CUDAExecutionProvider on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxRuntimeGraph:
    def __init__(self, path: Path, device: str, threads: int):
        options = ort.SessionOptions()
        # the engine runs one batch at a time: every thread on that batch's ops, none idle between them
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.outputs = tuple(output.name for output in self.session.get_outputs())

    def run(self, waveforms: np.ndarray, num_samples: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Only the outputs asked for are computed: without frames, the head is not run on every frame."""
        values = self.session.run(list(names), {"waveforms": waveforms, "num_samples": num_samples})
        return dict(zip(names, values, strict=True))
