"""What every command shares: a console, turning our typed errors into a clean exit, the options' choices
and help, uvicorn's options."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from enum import Enum
from typing import get_args

import typer
from rich.console import Console
from rich.markup import escape

from ..config import ModelConfig, Section, ServerConfig
from ..errors import EmoserveError, InvalidParameterError
from ..inference.results import CHANNEL_MODES, GRANULARITIES
from ..logs import uvicorn_log_config
from .outputs import FORMATS

console = Console(stderr=True)
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1")  # completions; any cuda:N is accepted
DTYPES = ("auto", "float32", "bfloat16", "float16")  # the names EmotionModel takes (tests/cli check it)
PRECISIONS = ("exact", "fast")  # config.ModelConfig.precision
BACKENDS: tuple[str, ...] = get_args(ModelConfig.model_fields["backend"].annotation)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An Enum of `values`, so that `--help` lists them and the shell completes them."""
    return Enum(name, {value: value for value in values}, type=str)


Granularity = choices("Granularity", GRANULARITIES)
OutputFormat = choices("OutputFormat", FORMATS)
Dtype = choices("Dtype", DTYPES)
Precision = choices("Precision", PRECISIONS)
Channels = choices("Channels", CHANNEL_MODES)
Backend = choices("Backend", BACKENDS)


def value_of(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value


def complete_device(incomplete: str) -> list[str]:
    return [device for device in DEVICES if device.startswith(incomplete)]


def about(section: type[Section], field: str) -> str:
    """An option's help: the setting's description (config.py, its one source) and its variable."""
    return f"{section.model_fields[field].description} [{section.env_prefix}{field.upper()}]"


SERVER_MODULES = ("torch", "soundfile", "av", "fastapi", "uvicorn")  # the `server` extra's, that these commands need


def require_server(command: str) -> None:
    """A command that runs a model or the service needs the `server` extra; the base install (the light client)
    says how to get it instead of failing on an import."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidParameterError(f"{command} runs the model here and needs the server install ({', '.join(missing)} "
                                    "missing): pip install 'emoserve[server]'; or analyse with a server: "
                                    "emoserve analyze --server URL")


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Our errors end the command with their message and exit code 1, never a traceback."""
    try:
        yield
    except EmoserveError as e:
        message = escape(e.message)  # "pip install 'emoserve[ray]'" is text, not a style
        console.print(f"[red]error[/red] ({e.code}): {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


def uvicorn_options(config: ServerConfig) -> dict:
    """`uvicorn.run`'s options for our servers: our own access log, uvicorn's lines in JSON with `log_json`, a
    graceful drain, and proxy headers only from the proxies `forwarded_allow_ips` names (uvicorn alone trusts
    X-Forwarded-For from 127.0.0.1: behind a local proxy, each client could name its own address, and with it
    a fresh budget)."""
    proxies = config.forwarded_allow_ips.strip()
    options = {"host": config.host, "port": config.port, "log_level": "warning", "access_log": False,
               "timeout_graceful_shutdown": config.shutdown_timeout_s, "proxy_headers": bool(proxies)}
    if proxies:
        options["forwarded_allow_ips"] = proxies
    if config.log_json:
        options["log_config"] = uvicorn_log_config(config)
    return options
