"""`emoserve models list | pull`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..config import get_settings
from .common import clean_errors, console, require_server

app = typer.Typer(help="List and download emotion2vec models.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Known models, where they come from, and whether they are in the cache."""
    with clean_errors():
        require_server("emoserve models")
    from ..model import hub  # imports torch: only when the command runs

    cache = get_settings().model.cache
    table = Table(title=f"models (cache: {cache})")
    table.add_column("name", no_wrap=True)
    for column in ("cached", "hugging face", "modelscope", "about"):
        table.add_column(column)
    for spec in hub.MODELS.values():
        cached = "yes" if hub.is_cached(spec.name, cache) else "no"
        hf, modelscope = (f"{spec.repo(s)}@{spec.revision(s)}" if spec.repo(s) else "-" for s in hub.SOURCES)
        table.add_row(spec.name, cached, hf, modelscope, spec.description)
    table.add_row("random:tiny|base|large", "built in", "-", "-", "random weights, for tests and benchmarks")
    console.print(table)


@app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="model name, e.g. emotion2vec_plus_large")],
    source: Annotated[str | None, typer.Option(help="hf (Hugging Face) or modelscope")] = None,
    force: Annotated[bool, typer.Option(help="download again even if cached")] = False,
    revision: Annotated[str | None, typer.Option(help="a commit hash, tag or branch; default: the one pinned for "
                                                      "the model (EMOSERVE_REVISION)")] = None,
) -> None:
    """Download a model into the cache (EMOSERVE_CACHE, default ~/.cache/emoserve)."""
    with clean_errors():
        require_server("emoserve models")
    from ..model import hub  # imports torch: only when the command runs

    config = get_settings(source=source, revision=revision).model
    with clean_errors():
        path = hub.pull(name, config.cache, config.source, force=force, revision=config.revision)
    console.print(f"{name} is ready at {path}")
