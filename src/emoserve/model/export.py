"""ONNX export: the network, its pooling and its emotion head as one graph, dynamic in batch and length.

    emoserve export onnx emotion2vec_plus_large -o exported/     # → exported/model.onnx
    export_onnx(EmotionModel.from_pretrained("random:tiny", device="cpu"), "exported/")

Inputs and outputs are documented in docs/onnx.md. The graph is the network's own forward (static
control flow, padding masked by arithmetic), traced by torch.export, so a padded batch gives each
clip what it gets alone and the scores match the PyTorch path; tests/model/test_export.py checks
both in onnxruntime. Label names and the sample rate travel in the file's metadata, so a runtime
needs nothing from emoserve.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import InvalidParameterError
from .config import FRAME_RATE, SAMPLE_RATE
from .emotion2vec import Emotion2vec, emotion_scores

if TYPE_CHECKING:
    from ..inference.emotion_model import EmotionModel

log = logging.getLogger(__name__)

INPUTS = ("waveforms", "num_samples")
HEAD_OUTPUTS = ("scores", "embedding", "frame_scores", "frame_features", "frame_lengths")
FEATURE_OUTPUTS = ("embedding", "frame_features", "frame_lengths")  # models without an emotion head
# What each --precision does to the fp32 graph (accuracy against fp32 in docs/onnx.md)
PRECISIONS = {
    "fp32": "the exact graph",
    "int8": "dynamic int8 quantization of the MatMuls (weights per channel; onnxruntime.quantization)",
    "fp16": "float16 weights and compute; float32 inputs, outputs, norms, softmax and mask arithmetic",
    "bf16": "weights stored in bfloat16 (half the file), computed in float32 on any provider",
}


class ExportGraph(nn.Module):
    """The network plus pooling and head, returning the tensors of docs/onnx.md in order.

    Rows of frame outputs past a clip's `frame_lengths` are zero, so padding never shows as data.
    """

    def __init__(self, network: Emotion2vec, label_index: Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("label_index", label_index.cpu(), persistent=False)

    def forward(self, waveforms: Tensor, num_samples: Tensor) -> tuple[Tensor, ...]:
        out = self.network(waveforms, num_samples)
        frame_features = out.features * out.frame_mask[..., None].to(out.features.dtype)  # (B, T, D)
        embedding = self.network.pool(out)  # (B, D)
        if self.network.proj is None:
            return embedding, frame_features, out.frame_lengths
        scores = emotion_scores(self.network.proj, self.label_index, embedding)  # (B, labels)
        frame_scores = emotion_scores(self.network.proj, self.label_index, frame_features)  # (B, T, labels)
        frame_scores = frame_scores * out.frame_mask[..., None].to(frame_scores.dtype)
        return scores, embedding, frame_scores, frame_features, out.frame_lengths


def export_onnx(model: EmotionModel, directory: str | Path, precision: str = "fp32") -> Path:
    """Write `directory/model.onnx` for an fp32 model on CPU; `precision` converts the graph (see PRECISIONS)."""
    if precision not in PRECISIONS:
        raise InvalidParameterError(f"ONNX precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if model.device.type != "cpu" or model.plan.compute != "fp32" or model.compiled:
        raise InvalidParameterError("export an exact fp32 model on CPU: load it with device='cpu' and "
                                    "precision='exact'; the export converts it (--precision)")
    try:
        import onnx  # noqa: F401  (the exporter's own dependencies: onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise InvalidParameterError("ONNX export needs onnx and onnxscript: pip install 'emoserve[onnx]'") from e
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if precision != "fp32" else path
        trace(ExportGraph(model.network, model.label_index).eval(), fp32)
        if precision != "fp32":
            convert(fp32, path, precision)
    add_metadata(path, model, precision)
    log.info("exported %s (%s) to %s", model.name, precision, path)
    return path


def convert(fp32: Path, target: Path, precision: str) -> None:
    """The exported fp32 graph at `fp32` as `precision` (see PRECISIONS) at `target`; metadata is copied."""
    import onnx

    {"int8": quantize_int8, "fp16": to_fp16, "bf16": to_bf16_weights}[precision](fp32, target)
    metadata = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    if metadata:
        proto = onnx.load(str(target))
        onnx.helper.set_model_props(proto, metadata | {"precision": precision})
        onnx.save(proto, str(target))


def trace(graph: ExportGraph, path: Path) -> None:
    """torch.export → ONNX, with batch and length dynamic; two clips of different length as the example."""
    num_samples = torch.tensor([2 * SAMPLE_RATE, SAMPLE_RATE])
    waveforms = 0.1 * torch.randn(2, int(num_samples.max()), generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples", min=graph.network.config.min_samples)
    outputs = HEAD_OUTPUTS if graph.network.proj is not None else FEATURE_OUTPUTS
    with torch.inference_mode(), quiet_exporter():
        program = torch.onnx.export(graph, (waveforms, num_samples), dynamo=True, input_names=list(INPUTS),
                                    output_names=list(outputs), dynamic_shapes=({0: batch, 1: samples}, {0: batch}),
                                    verbose=False)
    import onnx_ir

    for output in program.model.graph.outputs:  # the exporter names the frame axis by its formula
        if output.name.startswith("frame_") and output.shape is not None and output.shape.rank() > 1:
            output.shape = onnx_ir.Shape(["batch", "frames", *output.shape.dims[2:]])
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch's exporter logs and warns about its own internals (torchvision ops, pytree APIs, axis names)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", ".*The axis name", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8)


def to_fp16(source: Path, target: Path) -> None:
    """float16 weights and compute, with the statistics that overflow or lose most in fp16 kept in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(model, str(target))


# mask arithmetic, the per-clip waveform statistics (sums over up to 30 s of samples), norms, softmax
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceSum", "Range", "Less", "Where", "Sqrt", "Reciprocal"]


def to_bf16_weights(source: Path, target: Path) -> None:
    """Every weight matrix stored in bfloat16 (rounded to nearest), cast back to float32 in the graph.

    onnxruntime's CPU provider has no bfloat16 MatMul, so a bf16-compute graph would run nowhere
    but on a GPU; this file runs on every provider, in fp32, with bf16 weights: half the size,
    and onnxruntime folds the casts when it loads the model.
    """
    import ml_dtypes
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    casts = []
    for tensor in model.graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 2:
            continue
        name = tensor.name
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(ml_dtypes.bfloat16),
                                                f"{name}.bf16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}.bf16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))


def add_metadata(path: Path, model: EmotionModel, precision: str) -> None:
    """Label names (comma-separated, model order), sample rate and what the file is, as metadata_props."""
    import onnx

    proto = onnx.load(str(path))
    metadata = {"labels": ",".join(model.labels), "sample_rate": str(SAMPLE_RATE), "frame_rate": str(FRAME_RATE),
                "min_samples": str(model.config.min_samples), "model": model.name, "precision": precision}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
