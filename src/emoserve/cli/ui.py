"""`emoserve ui`: the web UI alone (the way the original deployment ran it on port 7860)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import get_settings
from .common import Dtype, Precision, clean_errors, complete_device, require_server, uvicorn_options, value_of


def ui(
    model: Annotated[str | None, typer.Option(help="model name, model dir, or random:tiny|base|large")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int, typer.Option(help="port")] = 7860,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N", autocompletion=complete_device)]
    = None,
    dtype: Annotated[Dtype | None, typer.Option(help="auto: bf16 on GPU, fp32 on CPU")] = None,
    precision: Annotated[Precision | None, typer.Option(help="exact (fp32, FunASR parity) or fast (docs/engine.md)")]
    = None,
) -> None:
    """Start the web UI with its own model. `emoserve serve` already has it at /ui, beside the API."""
    with clean_errors():
        require_server("emoserve ui")
    import uvicorn

    from ..ui import standalone_app

    settings = get_settings(model=model, host=host, port=port, device=device, precision=value_of(precision),
                            dtype=value_of(dtype))
    with clean_errors():
        app = standalone_app(settings)
    uvicorn.run(app, **uvicorn_options(settings.server))
