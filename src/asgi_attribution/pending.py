"""``Tracking``: what a ``track_*`` call returns, an awaitable that reports if it is dropped.

A forgotten ``await`` (``track_lead(request, ...)`` without it) only warns in Python, and
warnings are often off in production: the lead would be lost without a word. The event is
built (and validated) when ``track_*`` is called, so a ``Tracking`` that is never awaited can
name the event it would have sent, in an ERROR, when it is collected.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine, Generator
from typing import Any

from .transports import TrackResult

__all__ = ["Tracking"]

logger = logging.getLogger("asgi_attribution")


class Tracking(Coroutine[Any, Any, TrackResult]):
    """The pending result of a ``track_*`` call: ``await`` it (or give it to a task).

    A real coroutine as far as asyncio is concerned (``asyncio.run``, ``create_task`` and
    ``run_coroutine_threadsafe`` accept it). Collected without ever running, it logs an ERROR
    with the event id.

    Example:
        >>> import asyncio
        >>> async def answer():
        ...     return TrackResult("skipped", reason="no click id")
        >>> asyncio.run(Tracking(answer(), None, "track_lead")).status
        'skipped'
    """

    __slots__ = ("_coroutine", "_event_id", "_taken", "_what")

    def __init__(
        self, coroutine: Coroutine[Any, Any, TrackResult], event_id: str | None, what: str
    ) -> None:
        self._coroutine = coroutine
        self._event_id = event_id
        self._what = what
        # Set once something will drive the coroutine: `await` drops this object before the
        # coroutine takes its first step.
        self._taken = False

    @property
    def event_id(self) -> str | None:
        """The id of the event this call sends (``None`` when there is nothing to send)."""
        return self._event_id

    def send(self, value: Any) -> Any:
        """Step the coroutine (asyncio's interface)."""
        self._taken = True
        return self._coroutine.send(value)

    def throw(self, *args: Any) -> Any:
        """Raise inside the coroutine (asyncio's interface)."""
        return self._coroutine.throw(*args)

    def close(self) -> None:
        """Close the coroutine."""
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, TrackResult]:
        self._taken = True
        return self._coroutine.__await__()

    def __del__(self) -> None:
        coroutine = self._coroutine
        if self._taken or inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED:
            return
        coroutine.close()  # reported here, instead of Python's "never awaited" warning
        if self._event_id is not None:
            logger.error(
                "event %s was never sent: %s(...) was called but not awaited",
                self._event_id,
                self._what,
                extra={"event_id": self._event_id},
            )
