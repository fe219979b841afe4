from __future__ import annotations

import numpy as np
import pytest
import torch

from emoserve import EmotionModel
from emoserve.model.checkpoint import random_state_dict, save_model_dir
from emoserve.model.config import Emotion2vecConfig


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's model cache, upload store or logs."""
    monkeypatch.setenv("EMOSERVE_CACHE", str(tmp_path_factory.getbasetemp() / "emoserve-cache"))
    monkeypatch.setenv("EMOSERVE_DATA_DIR", str(tmp_path_factory.mktemp("emoserve-data")))
    monkeypatch.setenv("EMOSERVE_LOG_DIR", str(tmp_path_factory.mktemp("emoserve-logs")))


def decoder_tensors(config: Emotion2vecConfig, decoder_dim: int, seed: int = 99) -> dict[str, torch.Tensor]:
    """Random training-only decoder tensors, as official checkpoints carry them (FunASR key names)."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "d2v_model.modality_encoders.AUDIO.decoder."
    tensors = {}
    in_dim = config.embed_dim
    for i in range(4):
        tensors[f"{prefix}blocks.{i}.0.weight"] = torch.randn(decoder_dim, in_dim // 16, 7, generator=gen)
        tensors[f"{prefix}blocks.{i}.0.bias"] = torch.randn(decoder_dim, generator=gen)
        in_dim = decoder_dim
    tensors[f"{prefix}proj.weight"] = torch.randn(config.embed_dim, decoder_dim, generator=gen)
    tensors[f"{prefix}proj.bias"] = torch.randn(config.embed_dim, generator=gen)
    return tensors


def write_checkpoint(directory, config: Emotion2vecConfig, seed: int = 1, decoder_dim: int = 64):
    """An official-format model dir with every tensor random, decoder included."""
    return save_model_dir(directory, config, random_state_dict(config, seed),
                          extra_tensors=decoder_tensors(config, decoder_dim), decoder_dim=decoder_dim)


@pytest.fixture(scope="session")
def tiny_model() -> EmotionModel:
    return EmotionModel.from_pretrained("random:tiny", device="cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
