from __future__ import annotations

import numpy as np
import pytest
import torch

from emoserve import EmotionModel
from emoserve.model.config import Emotion2vecConfig
from emoserve.testing import write_random_model_dir


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


def write_checkpoint(directory, config: Emotion2vecConfig, seed: int = 1, decoder_dim: int = 64):
    """An official-format model dir with every tensor random, decoder included."""
    return write_random_model_dir(directory, config, seed, decoder_dim)


@pytest.fixture(scope="session")
def tiny_model() -> EmotionModel:
    return EmotionModel.from_pretrained("random:tiny", device="cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
