"""FunASR's own emotion2vec (the reference we must match), run on a model directory."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch


def load_reference(model_dir):
    """FunASR AutoModel on a local dir (its import and load print a lot: keep the test log readable)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from funasr import AutoModel

        model = AutoModel(model=str(model_dir), disable_update=True, device="cpu", disable_pbar=True,
                          log_level="ERROR")
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(2)  # AutoModel sets 4 on 2 cores; keep the suite's threads sane
    return model


def reference_outputs(model, wav: np.ndarray, granularity: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return model.generate(wav, granularity=granularity, extract_embedding=True, disable_pbar=True)[0]


def reference_state_dict(model) -> dict[str, torch.Tensor]:
    return model.model.state_dict()
