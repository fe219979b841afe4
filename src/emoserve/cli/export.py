"""`emoserve export onnx MODEL -o DIR`: the model as one ONNX graph (docs/onnx.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import clean_errors, console

app = typer.Typer(help="Export a model for other runtimes.", no_args_is_help=True)


@app.command("onnx")
def onnx(
    model: Annotated[str, typer.Argument(help="model name, local model dir, or random:tiny|base|large")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write model.onnx into")],
    precision: Annotated[str, typer.Option(help="fp32 (exact), int8, fp16 or bf16: see docs/onnx.md")] = "fp32",
) -> None:
    """Write OUTPUT/model.onnx: waveforms in; scores, embedding and frame outputs out; labels in its metadata."""
    from ..inference.emotion_model import EmotionModel  # torch loads here, not for `emoserve --help`
    from ..model.export import export_onnx

    with clean_errors():
        loaded = EmotionModel.from_pretrained(model, device="cpu", precision="exact")
        path = export_onnx(loaded, output, precision)
    console.print(f"wrote {path} ({precision}, labels: {', '.join(loaded.labels) or 'none'})")
