"""`emoserve serve`: the HTTP API (and the web UI unless --api-only)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import get_settings
from .common import clean_errors, require_server, uvicorn_options


def serve(
    model: Annotated[str | None, typer.Option(help="model name, model dir, or random:tiny|base|large")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    api_only: Annotated[bool | None, typer.Option("--api-only/--with-ui", help="skip the web UI")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="clips per model batch")] = None,
) -> None:
    """Start the service. Every option is also an EMOSERVE_* environment variable."""
    with clean_errors():
        require_server("emoserve serve")
    import uvicorn

    from ..api.app import create_app

    settings = get_settings(model=model, host=host, port=port, api_only=api_only, device=device, dtype=dtype,
                            max_batch_size=max_batch_size)
    app = create_app(settings)
    uvicorn.run(app, **uvicorn_options(settings.server))
