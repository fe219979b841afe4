"""precision = exact | fast: the plan per device and CPU, the kernels it swaps in, and what the model reports."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emoserve import EmotionModel, InvalidParameterError
from emoserve.model.checkpoint import random_state_dict
from emoserve.model.config import TINY
from emoserve.model.cpu import cpu_features
from emoserve.model.emotion2vec import Emotion2vec, TimeMajorConv1d
from emoserve.model.kernels import Int8Conv, Int8Linear, OneDNNLinear, quantize_activations, replace_modules, to_onednn
from emoserve.model.precision import apply_plan, plan_execution

from .test_cpu import ALDER_LAKE, ICE_LAKE, OLD_X86, SAPPHIRE_RAPIDS, ZEN3, ZEN5

CPU = torch.device("cpu")


@pytest.mark.parametrize("cpu, compute, levels", [
    (SAPPHIRE_RAPIDS, "bf16", None),  # AMX
    (ZEN5, "int8", 255),  # AVX512-BF16 but no AMX: VNNI int8 was faster than bf16 there
    (ZEN3, "int8", 127), (ICE_LAKE, "int8", 255), (ALDER_LAKE, "int8", 255),  # 7-bit activations without VNNI
    (OLD_X86, "fp32", None),  # nothing faster than fp32 there
], ids=["sapphire-rapids", "zen5", "zen3", "ice-lake", "alder-lake", "pre-avx2"])
def test_fast_picks_the_best_path_each_cpu_has(cpu, compute, levels):
    plan = plan_execution("fast", CPU, cpu=cpu)
    assert plan.compute == compute and plan.int8_levels == levels
    assert plan.precision == ("exact" if compute == "fp32" else "fast")
    assert plan.dtype == {"bf16": torch.bfloat16}.get(compute, torch.float32)
    assert plan.reason and compute in plan.execution


@pytest.mark.parametrize("cpu", [ZEN5, ZEN3, SAPPHIRE_RAPIDS], ids=["zen5", "zen3", "sapphire-rapids"])
def test_exact_is_fp32_with_the_fastest_fp32_matmuls_of_the_cpu(cpu):
    plan = plan_execution("exact", CPU, cpu=cpu)
    assert (plan.precision, plan.compute, plan.dtype) == ("exact", "fp32", torch.float32)
    assert plan.linear == cpu.fp32_linear
    assert ("oneDNN" if cpu.fp32_linear == "onednn" else "MKL") in plan.execution


def test_dtype_and_quantize_override_precision():
    assert plan_execution("exact", CPU, dtype="bfloat16", cpu=ZEN5).compute == "bf16"
    assert plan_execution("fast", CPU, dtype="float32", cpu=ZEN5).precision == "exact"
    assert plan_execution("exact", CPU, quantize=True, cpu=ZEN5).compute == "int8"
    with pytest.raises(InvalidParameterError):
        plan_execution("exact", CPU, dtype="bfloat16", quantize=True, cpu=ZEN5)
    with pytest.raises(InvalidParameterError):
        plan_execution("exact", CPU, quantize=True, cpu=OLD_X86)
    with pytest.raises(InvalidParameterError):
        plan_execution("exact", torch.device("cuda"), quantize=True)
    with pytest.raises(InvalidParameterError):
        plan_execution("fastest", CPU)
    with pytest.raises(InvalidParameterError):
        plan_execution("exact", CPU, dtype="int4")


def test_exact_on_cuda_is_fp32():
    plan = plan_execution("exact", torch.device("cuda"))
    assert (plan.compute, plan.dtype, plan.linear) == ("fp32", torch.float32, "cuda")


def test_onednn_linear_is_nn_linear_within_fp32_rounding(rng):
    linear = nn.Linear(96, 80)
    onednn = to_onednn(linear)
    x = torch.from_numpy(rng.standard_normal((3, 50, 96)).astype(np.float32))
    with torch.inference_mode():
        expected = linear(x)
        assert (onednn(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
        assert onednn(x).is_contiguous()
        assert torch.equal(onednn(x[0]), linear(x[0]))  # not 3-D: the plain path


@pytest.mark.parametrize("levels", [127, 255])
def test_int8_linear_is_close_to_fp32_and_exact_on_zeros(levels, rng):
    if levels == 255 and not cpu_features().vnni:
        pytest.skip("full-range int8 activations saturate without VNNI (the plan uses 7 bits there)")
    linear = nn.Linear(256, 64)
    int8 = Int8Linear(linear, levels)
    x = torch.from_numpy(rng.standard_normal((2, 40, 256)).astype(np.float32))
    with torch.inference_mode():
        expected = linear(x)
        error = ((int8(x) - expected).norm() / expected.norm()).item()
        assert 0 < error <= (0.03 if levels == 127 else 0.015)
        assert torch.allclose(int8(torch.zeros(1, 3, 256)), linear.bias.expand(1, 3, 64), atol=1e-6)


@pytest.mark.parametrize("levels", [127, 255])
def test_int8_conv_is_close_to_fp32_and_pads_with_real_zeros(levels, rng):
    if levels == 255 and not cpu_features().vnni:
        pytest.skip("full-range int8 activations saturate without VNNI (the plan uses 7 bits there)")
    conv = nn.Conv1d(64, 64, 7, padding=3, groups=4)
    int8 = Int8Conv(conv, levels)
    # time-major in memory, as the network holds it; mostly positive (after a GELU), so the zero point is not 0
    x = torch.from_numpy((rng.standard_normal((2, 90, 64)) + 1.5).astype(np.float32)).transpose(1, 2)
    with torch.inference_mode():
        out = int8(x)
        expected = conv(x)
        error = ((out - expected).norm() / expected.norm()).item()
        assert 0 < error <= (0.03 if levels == 127 else 0.015)
        # the same arithmetic in fp32 on the quantized values: equal, the padded edges included
        codes, scale, zero_point = quantize_activations(x, levels)
        weight_codes = torch.round(conv.weight / int8.weight_scale[:, None, None])
        dequantized = F.conv1d((codes.float() - zero_point) * scale, weight_codes * int8.weight_scale[:, None, None],
                               conv.bias, padding=3, groups=4)
        assert (out - dequantized).abs().max().item() <= 1e-4 * dequantized.abs().max().item()
        assert out.transpose(1, 2).is_contiguous()  # time-major in, time-major out


def test_quantized_activations_keep_zeros_exact_and_span_the_levels(rng):
    x = torch.from_numpy(rng.standard_normal((3, 50)).astype(np.float32))
    x[0] = 0
    for levels in (127, 255):
        codes, scale, zero_point = quantize_activations(x, levels)
        assert codes.dtype == torch.uint8 and int(codes.min()) == 0 and int(codes.max()) == levels
        assert torch.all(codes[0].long() == zero_point)
        assert ((codes.float() - zero_point) * scale - x).abs().max().item() <= scale.item() / 2 + 1e-6


def tiny_network() -> Emotion2vec:
    network = Emotion2vec(TINY).eval().requires_grad_(False)
    network.load_state_dict(random_state_dict(TINY, 4))
    return network


def test_the_plans_swap_the_transformer_linears_and_leave_the_head(rng):
    int8 = tiny_network()
    apply_plan(plan_execution("fast", CPU, cpu=ZEN3), int8)
    assert all(isinstance(m, Int8Linear) for n, m in int8.named_modules() if n.startswith("blocks.") and
               n.rsplit(".", 1)[-1] in ("qkv", "out", "fc1", "fc2"))
    assert type(int8.feature_proj) is nn.Linear and type(int8.proj) is nn.Linear
    first, *others = int8.feature_extractor.layers
    assert type(first.conv) is TimeMajorConv1d  # one input channel: left in fp32
    assert all(isinstance(layer.conv, Int8Conv) for layer in others)
    assert all(isinstance(conv, Int8Conv) for conv in int8.pos_conv.convs)

    onednn = tiny_network()
    apply_plan(plan_execution("exact", CPU, cpu=ZEN5), onednn)
    assert isinstance(onednn.blocks[0].mlp.fc1, OneDNNLinear) and isinstance(onednn.feature_proj, OneDNNLinear)
    assert type(onednn.proj) is nn.Linear
    plain = tiny_network()
    wav = torch.from_numpy((0.1 * rng.standard_normal((2, 12000))).astype(np.float32))
    lengths = torch.tensor([12000, 7000])
    with torch.inference_mode():
        expected, swapped = plain(wav, lengths), onednn(wav, lengths)
    scale = expected.features.abs().max().item()
    assert (swapped.features - expected.features).abs().max().item() <= 1e-5 * scale


def test_replace_modules_swaps_by_name():
    network = tiny_network()
    replace_modules(network, ["blocks.1.attn.qkv"], to_onednn)
    assert isinstance(network.blocks[1].attn.qkv, OneDNNLinear)
    assert type(network.blocks[0].attn.qkv) is nn.Linear


def test_precision_setting_chooses_the_path_and_the_model_reports_it(monkeypatch, rng):
    monkeypatch.setenv("EMOSERVE_PRECISION", "fast")
    fast = EmotionModel.from_pretrained("random:tiny", device="cpu")
    exact = EmotionModel.from_pretrained("random:tiny", device="cpu", precision="exact")
    assert exact.info.precision == "exact" and exact.info.execution.startswith("fp32")
    assert fast.info.precision == fast.plan.precision
    if fast.plan.compute != "fp32":  # every x86 CPU with AVX2 has a fast path
        assert fast.info.precision == "fast" and fast.info.execution.startswith(fast.plan.compute)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 20000)]
    for a, b in zip(exact.predict(clips), fast.predict(clips), strict=True):
        assert np.abs(a.probs - b.probs).max() <= 0.05
