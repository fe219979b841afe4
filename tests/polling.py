"""Waiting in tests for something another thread or process does: poll a condition until it holds or time runs out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "the condition", *,
             interval: float = 0.05, explain: Callable[[], str] | None = None) -> T:
    """The condition's first truthy value; AssertionError naming `what` (and `explain()`'s text) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f":\n{explain()}" if explain else ""))
