"""`emoserve analyze`: the emotion of audio files, with a local model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import EmoserveError
from ..settings import get_settings
from .common import clean_errors, console


def analyze(
    paths: Annotated[list[Path], typer.Argument(help="audio files")],
    model: Annotated[str | None, typer.Option(help="model name, model dir or random:tiny|base|large")] = None,
    granularity: Annotated[str, typer.Option(help="utterance or frame")] = "utterance",
    output_format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda")] = None,
) -> None:
    """Print the emotion of each file."""
    from ..emotion_model import EmotionModel  # torch loads here, not for `emoserve --help`

    settings = get_settings(model=model, device=device)
    with clean_errors():
        emotion_model = EmotionModel.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype,
                                                     cache_dir=settings.cache, source=settings.source)
    table = Table("file", "emotion", "confidence", "duration (s)")
    failures = 0
    for path in paths:
        try:
            result = emotion_model.analyze(path, granularity=granularity)
        except EmoserveError as e:
            failures += 1
            console.print(f"[red]{path}[/red]: {e.code}: {e.message}", highlight=False)
            continue
        if output_format == "json":
            typer.echo(json.dumps({"file": str(path), **result.to_dict()}))
        else:
            confidence = f"{result.confidence:.3f}" if result.confidence is not None else "-"
            table.add_row(str(path), result.emotion or "-", confidence, f"{result.duration_s:.2f}")
    if output_format != "json":
        console.print(table)
    if failures:
        raise typer.Exit(1)
