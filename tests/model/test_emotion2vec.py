import math

import numpy as np
import pytest
import torch

from emoserve.model.checkpoint import random_state_dict
from emoserve.model.config import PLUS_BASE, PLUS_LARGE, TINY
from emoserve.model.emotion2vec import Emotion2vec, alibi_slopes, frame_counts

from .test_parity_funasr import VARIANTS


def build(config, seed=3):
    network = Emotion2vec(config).eval().requires_grad_(False)
    network.load_state_dict(random_state_dict(config, seed))
    return network


def test_frame_count_is_the_conv_formula_and_matches_the_extractor():
    network = build(TINY)
    for n in [400, 401, 719, 720, 1000, 16000, 16319, 16320]:
        expected = (n - 400) // 320 + 1
        assert frame_counts(TINY, torch.tensor([n])).item() == expected
        with torch.inference_mode():
            assert network.feature_extractor(torch.zeros(1, n), torch.tensor([n])).shape[1] == expected


def test_min_samples_is_the_receptive_field():
    assert PLUS_LARGE.min_samples == PLUS_BASE.min_samples == TINY.min_samples == 400
    assert frame_counts(PLUS_LARGE, torch.tensor([399])).item() == 0


@pytest.mark.parametrize("heads", [4, 12, 16])
def test_alibi_slopes_follow_fairseq(heads):
    def power_of_2(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    slopes = alibi_slopes(heads)
    if math.log2(heads).is_integer():
        expected = power_of_2(heads)
    else:
        p = 2 ** math.floor(math.log2(heads))
        expected = power_of_2(p) + power_of_2(2 * p)[0::2][: heads - p]
    assert slopes == pytest.approx(expected, rel=1e-12)


def run_alone_and_batched(network, clips):
    with torch.inference_mode():
        alone = []
        for clip in clips:
            out = network(torch.from_numpy(clip)[None])
            alone.append((out.features[0], network.pool(out)[0]))
        lengths = torch.tensor([len(c) for c in clips])
        batch = torch.zeros(len(clips), int(lengths.max()))
        for i, clip in enumerate(clips):
            batch[i, : len(clip)] = torch.from_numpy(clip)
        out = network(batch, lengths)
        pooled = network.pool(out)
    return alone, out, pooled


@pytest.mark.parametrize("config", [TINY, PLUS_BASE], ids=["tiny", "base"])
def test_a_padded_batch_gives_each_clip_what_it_gets_alone(config, rng):
    network = build(config)
    lengths = [400, 3217, 16000, 9000, 719, 23456] if config is TINY else [400, 16000, 9000, 28001]
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    alone, out, pooled = run_alone_and_batched(network, clips)
    for i, (features, embedding) in enumerate(alone):
        t = features.shape[0]
        assert out.frame_lengths[i].item() == t
        assert torch.equal(out.frame_mask[i], torch.arange(out.features.shape[1]) < t)
        assert (out.features[i, :t] - features).abs().max().item() <= 1e-5
        assert (pooled[i] - embedding).abs().max().item() <= 1e-5
        with torch.inference_mode():
            probs_alone = torch.softmax(network.proj(embedding), -1)
            probs_batch = torch.softmax(network.proj(pooled[i]), -1)
        assert (probs_alone - probs_batch).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", [*VARIANTS, "base"])
def test_a_padded_fp32_batch_matches_each_clip_alone_in_float64(variant, rng):
    """The masked, static forward computes the network's math: each clip of a mixed-length batch
    gets, within fp32 rounding, what float64 arithmetic gives that clip unpadded (every config
    variant, the per-channel GroupNorm extractor included, which must ignore padded steps)."""
    config = PLUS_BASE if variant == "base" else VARIANTS[variant]
    network = build(config)
    reference = build(config).double()
    lengths = [400, 3217, 16000, 719, 23456]
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    batch = torch.zeros(len(clips), max(lengths))
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = torch.from_numpy(clip)
    with torch.inference_mode():
        out = network(batch, torch.tensor(lengths))
        pooled = network.pool(out)
        for i, clip in enumerate(clips):
            alone = reference(torch.from_numpy(clip).double()[None])
            t = alone.frame_lengths[0].item()
            assert out.frame_lengths[i].item() == t
            scale = alone.features.abs().max().item()
            assert (out.features[i, :t].double() - alone.features[0]).abs().max().item() <= 5e-6 * scale
            if config.num_labels:
                scores = torch.softmax(network.proj(pooled[i]), -1).double()
                expected = torch.softmax(reference.proj(reference.pool(alone)[0]), -1)
                assert (scores - expected).abs().max().item() <= 1e-6


def test_padding_content_does_not_leak_into_a_clip(rng):
    network = build(TINY)
    clip = (0.1 * rng.standard_normal(5000)).astype(np.float32)
    batch = torch.zeros(2, 12000)
    batch[0, :5000] = torch.from_numpy(clip)
    batch[1] = torch.from_numpy((0.1 * rng.standard_normal(12000)).astype(np.float32))
    garbage = batch.clone()
    garbage[0, 5000:] = 100.0  # whatever sits past the end must not matter
    lengths = torch.tensor([5000, 12000])
    with torch.inference_mode():
        a = network(batch, lengths)
        b = network(garbage, lengths)
    t = a.frame_lengths[0]
    assert torch.allclose(a.features[0, :t], b.features[0, :t], atol=1e-6)


def test_every_parameter_changes_the_output(rng):
    """No tensor is dead weight: perturbing any one of them moves the features."""
    network = build(TINY)
    clip = torch.from_numpy((0.1 * rng.standard_normal(4000)).astype(np.float32))[None]
    with torch.inference_mode():
        reference = network(clip).features.clone()
        for name, param in network.named_parameters():
            if name.startswith("proj."):
                continue
            saved = param.detach().clone()
            param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
            moved = (network(clip).features - reference).abs().max().item()
            param.copy_(saved)
            assert moved > 1e-4, f"{name} does not affect the output"
