"""Waiting for a condition in tests: poll it, never sleep a fixed time to hide a race."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    error: type[Exception] = AssertionError,
) -> Any:
    """Call ``condition`` until it returns something truthy (returned); raise ``error`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
