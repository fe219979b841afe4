"""ONNX export (`emoserve export onnx`): the documented interface, run in onnxruntime, against the PyTorch path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from emoserve import EmotionModel
from emoserve.cli import app
from emoserve.errors import InvalidParameterError
from emoserve.labels import LABELS
from emoserve.model.checkpoint import random_state_dict
from emoserve.model.config import TINY
from emoserve.model.emotion2vec import Emotion2vec
from emoserve.model.export import export_onnx
from emoserve.model.kernels import OneDNNLinear
from emoserve.model.precision import apply_plan, plan_execution

from .test_cpu import ZEN5

DOCS = Path(__file__).parents[2] / "docs" / "onnx.md"
LENGTHS = [400, 3217, 16000, 719, 23456]


def clips(lengths=LENGTHS, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def padded(waveforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    batch = np.zeros((len(waveforms), max(len(w) for w in waveforms)), np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = w
    return {"waveforms": batch, "num_samples": np.array([len(w) for w in waveforms], dtype=np.int64)}


def run(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs), strict=True))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_batch_matches_alone_and_torch(model: EmotionModel, path: Path, lengths=LENGTHS) -> None:
    sess, waveforms = session(path), clips(lengths)
    batch = run(sess, padded(waveforms))
    expected = model.predict(waveforms, frames=True)
    for i, (wav, torch_out) in enumerate(zip(waveforms, expected, strict=True)):
        alone = run(sess, padded([wav]))
        t = int(alone["frame_lengths"][0])
        assert batch["frame_lengths"][i] == t == len(torch_out.frame_features)
        scale = np.abs(alone["frame_features"]).max()
        assert np.abs(batch["frame_features"][i, :t] - alone["frame_features"][0]).max() <= 1e-5 * scale
        assert np.abs(batch["embedding"][i] - alone["embedding"][0]).max() <= 1e-5 * scale
        assert np.abs(batch["embedding"][i] - torch_out.embedding).max() <= 1e-5 * scale
        assert np.abs(batch["frame_features"][i, :t] - torch_out.frame_features).max() <= 1e-5 * scale
        if model.network.proj is not None:
            assert np.abs(batch["scores"][i] - alone["scores"][0]).max() <= 1e-5
            assert np.abs(batch["scores"][i] - torch_out.probs).max() <= 1e-5
            assert np.abs(batch["frame_scores"][i, :t] - torch_out.frame_probs).max() <= 1e-5


@pytest.fixture(scope="module")
def model() -> EmotionModel:
    """With the linears an AMD AVX-512 CPU runs (1×1 convolutions): the graph must not depend on that."""
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")
    apply_plan(plan_execution("exact", torch.device("cpu"), cpu=ZEN5), model.network)
    assert isinstance(model.network.blocks[0].attn.qkv, OneDNNLinear)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "exported")


def test_outputs_and_metadata_are_as_documented(exported, model):
    proto = onnx.load(str(exported))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    labels = len(model.labels)
    assert dims == {"waveforms": ["batch", "samples"], "num_samples": ["batch"], "scores": ["batch", labels],
                    "embedding": ["batch", 64], "frame_scores": ["batch", "frames", labels],
                    "frame_features": ["batch", "frames", 64], "frame_lengths": ["batch"]}
    assert [v.name for v in proto.graph.output] == ["scores", "embedding", "frame_scores", "frame_features",
                                                    "frame_lengths"]
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert types["num_samples"] == types["frame_lengths"] == onnx.TensorProto.INT64
    assert types["waveforms"] == types["scores"] == onnx.TensorProto.FLOAT
    convolutions = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convolutions) == len(TINY.feature_encoder_spec) + TINY.conv_pos_depth  # linears are MatMuls
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["labels"].split(",") == list(model.labels) == list(LABELS)
    assert metadata["sample_rate"] == "16000" and metadata["precision"] == "fp32"
    assert metadata["min_samples"] == "400"


def test_a_padded_batch_gives_each_clip_what_it_gets_alone_and_what_pytorch_gives(exported, model):
    check_batch_matches_alone_and_torch(model, exported)


def test_frame_rows_past_a_clips_length_are_zero(exported):
    out = run(session(exported), padded(clips([16000, 4000])))
    t = int(out["frame_lengths"][1])
    assert t < out["frame_features"].shape[1]
    assert not out["frame_features"][1, t:].any() and not out["frame_scores"][1, t:].any()
    assert out["frame_features"][1, :t].any()


def test_the_documented_onnxruntime_example_runs_without_emoserve(exported, model, tmp_path):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S)[1]
    assert "emoserve" not in code
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "model.onnx").symlink_to(exported)
    wav = clips([24000])[0]
    sf.write(tmp_path / "clip.wav", wav, 16000, subtype="FLOAT")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # emoserve must not be importable
    printed = subprocess.run([sys.executable, "-c", "import sys; sys.modules['emoserve'] = None\n" + code],
                             cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert printed.split()[0] == model.analyze(wav).emotion


@pytest.mark.slow
@pytest.mark.parametrize("precision, max_score_error", [("int8", 0.1), ("fp16", 2e-3), ("bf16", 1e-2)])
def test_precision_variants_run_in_onnxruntime_close_to_fp32(precision, max_score_error, exported, tmp_path):
    # through the CLI: `emoserve export onnx MODEL -o DIR --precision P`
    result = CliRunner().invoke(app, ["export", "onnx", "random:tiny", "-o", str(tmp_path), "--precision", precision])
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == precision
    weight_types = {t.data_type for t in proto.graph.initializer if len(t.dims) >= 2}
    expected_types = {"int8": onnx.TensorProto.INT8, "fp16": onnx.TensorProto.FLOAT16,
                      "bf16": onnx.TensorProto.BFLOAT16}
    assert expected_types[precision] in weight_types
    inputs = padded(clips())
    reference, out = run(session(exported), inputs), run(session(tmp_path / "model.onnx"), inputs)
    error = np.abs(out["scores"] - reference["scores"]).max()
    assert 0 < error <= max_score_error
    assert (out["frame_lengths"] == reference["frame_lengths"]).all()


@pytest.mark.slow
def test_a_model_without_a_head_exports_embedding_and_frame_features(tmp_path):
    config = replace(TINY, num_labels=0)
    network = Emotion2vec(config)
    network.load_state_dict(random_state_dict(config, 5))
    model = EmotionModel(network, [], "random:tiny-nohead", weights="random", device="cpu")
    path = export_onnx(model, tmp_path)
    assert [o.name for o in session(path).get_outputs()] == ["embedding", "frame_features", "frame_lengths"]
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["labels"] == ""
    check_batch_matches_alone_and_torch(model, path, lengths=[400, 9000, 5000])


@pytest.mark.slow
def test_a_base_size_model_exports_exactly(tmp_path):
    model = EmotionModel.from_pretrained("random:base", device="cpu")
    check_batch_matches_alone_and_torch(model, export_onnx(model, tmp_path), lengths=[400, 16000, 9000, 28001])


def test_only_an_exact_fp32_cpu_model_exports(tmp_path):
    model = EmotionModel.from_pretrained("random:tiny", device="cpu", precision="fast")
    with pytest.raises(InvalidParameterError):
        export_onnx(model, tmp_path)
    with pytest.raises(InvalidParameterError):
        export_onnx(EmotionModel.from_pretrained("random:tiny", device="cpu"), tmp_path, precision="int4")
    assert not (tmp_path / "model.onnx").exists()

