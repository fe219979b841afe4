"""`emoserve serve`: the HTTP API (and the web UI unless --api-only).

Under a supervisor (Kubernetes, Docker, systemd) the process says what happened by how it ends: a model
that cannot load ends it with exit status 1 after logging why, so the supervisor restarts it instead of
routing to a server that answers 503 forever; SIGTERM drains the requests in flight (up to
`shutdown_timeout_s`), stops jobs and the engine, and ends it with status 0.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Annotated

import typer

from ..config import get_settings
from .common import console, uvicorn_options


def serve(
    model: Annotated[str | None, typer.Option(help="model name, model dir, or random:tiny|base|large")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    api_only: Annotated[bool | None, typer.Option("--api-only/--with-ui", help="skip the web UI")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    precision: Annotated[str | None, typer.Option(help="exact (fp32, FunASR parity) or fast (docs/engine.md)")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="clips per model batch")] = None,
) -> None:
    """Start the service. Every option is also an EMOSERVE_* environment variable."""
    import uvicorn

    from ..api.app import create_app

    settings = get_settings(model=model, host=host, port=port, api_only=api_only, device=device, precision=precision,
                            dtype=dtype, max_batch_size=max_batch_size)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings.server)))

    def stop(*_) -> None:
        server.should_exit = True

    service = app.state.service
    service.on_load_failure = stop
    # uvicorn handles SIGTERM while it runs and raises it again once drained; this handler then takes it,
    # so a drained stop ends with status 0 (and a SIGTERM before uvicorn's handler is set still stops it)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, raised again by uvicorn after its drain
            server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if service.status == "failed":
        console.print(f"[red]error[/red] (model_unavailable): the model failed to load: {service.error}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
