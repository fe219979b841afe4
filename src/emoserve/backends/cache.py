"""Exported graphs in the model cache: exported once per checkpoint, emoserve version and precision, reused.

    <cache>/graphs/<content hash>-<emoserve version>-<precision>/model.onnx

The content hash covers the checkpoint's tensors, its architecture and its labels, so a changed checkpoint
(or a re-downloaded revision) is exported again, and so is every checkpoint after an emoserve upgrade (the
graph is emoserve's forward). The file is written under a temporary name in the same folder and renamed
into place, so a process that starts while another exports never reads half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import __version__
from ..model.config import Emotion2vecConfig

if TYPE_CHECKING:
    from ..inference.emotion_model import EmotionModel

log = logging.getLogger(__name__)


def checkpoint_digest(state: Mapping[str, torch.Tensor], config: Emotion2vecConfig, labels: Sequence[str]) -> str:
    """sha256 of the tensors (names, types, shapes, bytes), the architecture and the labels."""
    digest = hashlib.sha256(repr((config, tuple(labels))).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def graph_path(cache: Path, digest: str, precision: str) -> Path:
    return Path(cache) / "graphs" / f"{digest[:32]}-{__version__}-{precision}" / "model.onnx"


def exported_graph(model: EmotionModel, cache: Path, digest: str, precision: str) -> Path:
    """The cached export of `model` (exact fp32 on CPU) at `precision`, exported now if not there yet.

    Other precisions are converted from the cached fp32 graph (exported first if need be): tracing the
    network is the slow part, done once per checkpoint.
    """
    from ..model.export import convert, export_onnx

    path = graph_path(cache, digest, precision)
    if path.exists():
        log.info("exported graph from the cache: %s", path)
        return path
    fp32 = exported_graph(model, cache, digest, "fp32") if precision != "fp32" else None
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        if fp32 is None:
            os.replace(export_onnx(model, tmp, precision), path)
        else:
            convert(fp32, Path(tmp) / "model.onnx", precision)
            os.replace(Path(tmp) / "model.onnx", path)
    log.info("exported %s to %s (%s) in %.1fs", model.name, path, precision, time.perf_counter() - started)
    return path
