"""Our network against FunASR's own emotion2vec, live, on random checkpoints in the official format."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from emoserve import EmotionModel
from emoserve.model.config import PLUS_BASE, PLUS_LARGE, TINY

from ..conftest import write_checkpoint
from .funasr_reference import load_reference, reference_outputs, reference_state_dict

VARIANTS = {
    "tiny": TINY,
    "tiny-pre-ln": replace(TINY, layer_norm_first=True),
    "tiny-alibi-per-layer": replace(TINY, alibi_scale_per_layer=True),
    "tiny-alibi-shared-scale": replace(TINY, alibi_scale_per_head=False),
    "tiny-pos-pre-ln-even-kernel": replace(TINY, conv_pos_pre_ln=True, conv_pos_width=8),
    "tiny-group-norm-extractor": replace(TINY, extractor_mode="default"),
    "tiny-fewer-alibi-heads-6": replace(TINY, embed_dim=48, num_heads=6, num_alibi_heads=3, conv_pos_groups=4),
    "tiny-no-affine-no-alibi": replace(TINY, norm_affine=False, use_alibi=False),
}


def check_parity(tmp_path, config, lengths, seed=7):
    directory = write_checkpoint(tmp_path / "model", config, seed=seed, decoder_dim=64)
    ours = EmotionModel.from_pretrained(str(directory), device="cpu", cache_dir=tmp_path / "cache")
    reference = load_reference(directory)

    # FunASR silently keeps random init for missing or misshapen keys: prove it loaded every tensor
    checkpoint = torch.load(directory / "model.pt", weights_only=True)["model"]
    for key, tensor in reference_state_dict(reference).items():
        if ".decoder." in key:
            continue
        stored = checkpoint.get("d2v_model." + key, checkpoint.get(key))
        assert stored is not None and torch.equal(stored, tensor), f"FunASR did not load {key}"

    rng = np.random.default_rng(seed)
    for n in lengths:
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        for granularity in ("utterance", "frame"):
            expected = reference_outputs(reference, wav, granularity)
            result = ours.analyze(wav, granularity=granularity, return_embedding=True)
            emb, ref_emb = result.embedding, expected["feats"]
            assert emb.shape == ref_emb.shape
            rel = np.abs(emb - ref_emb).max() / np.abs(ref_emb).max()
            assert rel <= 1e-4, f"{granularity} embedding differs at {n} samples: {rel:.2e}"
            if config.num_labels:
                scores = np.array([result.utterance_scores[label] for label in ours.labels])
                assert np.abs(scores - np.array(expected["scores"])).max() <= 1e-5
                assert result.emotion == ours.labels[int(np.argmax(expected["scores"]))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_variants_match_funasr(tmp_path, variant):
    check_parity(tmp_path, VARIANTS[variant], lengths=[400, 1999, 16000])


@pytest.mark.slow
@pytest.mark.parametrize("config", [PLUS_LARGE, PLUS_BASE], ids=["plus_large", "plus_base"])
def test_full_size_models_match_funasr(tmp_path, config):
    # from the shortest clip the model accepts to the 30 s API limit
    check_parity(tmp_path, config, lengths=[400, 719, 16123, 80000, 30 * 16000],
                 seed=11 if config is PLUS_LARGE else 12)
