"""Waiting in tests for something another process or thread does: bounded, and named when it
times out."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 30.0, every: float = 0.02
) -> None:
    """Return once ``condition()`` holds; raise AssertionError naming ``what`` after
    ``timeout`` seconds. ``every``: seconds between two looks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
