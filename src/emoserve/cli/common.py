"""What every command shares: a console, turning our typed errors into a clean exit, uvicorn's options."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from ..config import ServerConfig
from ..errors import EmoserveError, InvalidParameterError

console = Console(stderr=True)
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
    """`uvicorn.run`'s options for our servers: our own access log, a graceful drain, and proxy headers
    only from the proxies `forwarded_allow_ips` names (uvicorn alone trusts X-Forwarded-For from 127.0.0.1:
    behind a local proxy, each client could name its own address, and with it a fresh budget)."""
    proxies = config.forwarded_allow_ips.strip()
    options = {"host": config.host, "port": config.port, "log_level": "warning", "access_log": False,
               "timeout_graceful_shutdown": 30, "proxy_headers": bool(proxies)}
    if proxies:
        options["forwarded_allow_ips"] = proxies
    return options
