"""`emoserve serve`: the HTTP API (and the web UI unless --api-only).

Under a supervisor (Kubernetes, Docker, systemd) the process says what happened by how it ends: a model
that cannot load ends it with exit status 1 after logging why, so the supervisor restarts it instead of
routing to a server that answers 503 forever; SIGTERM drains the requests in flight (up to
`shutdown_timeout_s`), stops jobs and the engine, and ends it with status 0.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from ..config import EngineConfig, ModelConfig, ServerConfig, StoreConfig, get_settings
from .common import (
    Backend,
    Dtype,
    Precision,
    about,
    clean_errors,
    complete_device,
    console,
    require_server,
    uvicorn_options,
    value_of,
)


def serve(
    model: Annotated[str | None, typer.Option(help=about(ModelConfig, "model"))] = None,
    host: Annotated[str | None, typer.Option(help=about(ServerConfig, "host"))] = None,
    port: Annotated[int | None, typer.Option(help=about(ServerConfig, "port"))] = None,
    api_only: Annotated[bool | None, typer.Option("--api-only/--with-ui", help=about(ServerConfig, "api_only"))]
    = None,
    device: Annotated[str | None, typer.Option(help=about(ModelConfig, "device"), autocompletion=complete_device)]
    = None,
    precision: Annotated[Precision | None, typer.Option(help=about(ModelConfig, "precision"))] = None,
    dtype: Annotated[Dtype | None, typer.Option(help=about(ModelConfig, "dtype"))] = None,
    backend: Annotated[Backend | None, typer.Option(help=about(ModelConfig, "backend"))] = None,
    threads: Annotated[int | None, typer.Option(help=about(EngineConfig, "threads"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=about(EngineConfig, "max_batch_size"))] = None,
    cache: Annotated[Path | None, typer.Option(help=about(ModelConfig, "cache"))] = None,
    api_keys_file: Annotated[Path | None, typer.Option(help=about(ServerConfig, "api_keys_file"))] = None,
    data_dir: Annotated[Path | None, typer.Option(help=about(StoreConfig, "data_dir"))] = None,
    log_dir: Annotated[Path | None, typer.Option(help=about(ServerConfig, "log_dir"))] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json/--log-text", help=about(ServerConfig, "log_json"))]
    = None,
    forwarded_allow_ips: Annotated[str | None, typer.Option(help=about(ServerConfig, "forwarded_allow_ips"))]
    = None,
    ray: Annotated[str | None, typer.Option(
        help="serve on Ray Serve: auto (the running cluster), local (start one here) or its address; model "
             "replicas from the EMOSERVE_RAY_* settings (docs/scaling.md)")] = None,
) -> None:
    """Start the service. Every option is also an EMOSERVE_* variable, and every setting can come from a file
    (EMOSERVE_CONFIG=emoserve.toml; docs/configuration.md). One process serves one model: run more processes
    (or replicas) to scale out, or serve on a Ray cluster with --ray."""
    with clean_errors():
        require_server("emoserve serve")
        settings = get_settings(model=model, host=host, port=port, api_only=api_only, device=device,
                                precision=value_of(precision), dtype=value_of(dtype), backend=value_of(backend),
                                threads=threads,
                                max_batch_size=max_batch_size, cache=cache, api_keys_file=api_keys_file,
                                data_dir=data_dir, log_dir=log_dir, log_json=log_json,
                                forwarded_allow_ips=forwarded_allow_ips)
    if ray is not None:
        from ..scale.serve import run

        with clean_errors():
            run(ray, settings, console.print)
        return
    import uvicorn

    from ..api.app import create_app

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
