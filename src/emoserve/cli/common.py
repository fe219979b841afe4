"""What every command shares: a console, and turning our typed errors into a clean exit."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

from ..errors import EmoserveError

console = Console(stderr=True)


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Our errors end the command with their message and exit code 1, never a traceback."""
    try:
        yield
    except EmoserveError as e:
        console.print(f"[red]error[/red] ({e.code}): {e.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
