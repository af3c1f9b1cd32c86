"""Handing work to the event loop that owns a queue, from another loop or thread.

One loop owns the background queue. A caller on another loop (``asyncio.run`` in a sync view,
a job thread) never touches the queue: it schedules the work on the owner with
:func:`asyncio.run_coroutine_threadsafe` and awaits the answer. If the owner does not take the
work within ``timeout`` seconds (blocked, or stopping), the caller withdraws it and does it
itself; a :class:`Ticket` makes sure exactly one of the two does.

Example:
    >>> ticket = Ticket()
    >>> ticket.take(), ticket.withdraw()
    (True, False)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ..events import Event

__all__ = ["Ticket", "alive", "hand_over", "on_owner", "run_on"]

T = TypeVar("T")

logger = logging.getLogger("asgi_attribution")


def alive(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True while ``loop`` is running (and so owns what it started).

    Example:
        >>> loop = asyncio.new_event_loop()
        >>> alive(None), alive(loop)
        (False, False)
        >>> loop.close()
    """
    return loop is not None and loop.is_running() and not loop.is_closed()


class Ticket:
    """Work offered to the owner: either the owner takes it, or the caller withdraws it."""

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "offered"

    def take(self) -> bool:
        """For the owner: True if the work is now the owner's to do."""
        return self._settle("taken")

    def withdraw(self) -> bool:
        """For the caller: True if the owner never took it (the caller does it now)."""
        return self._settle("withdrawn")

    @property
    def taken(self) -> bool:
        """True once the owner took the work."""
        return self._state == "taken"

    def _settle(self, state: str) -> bool:
        with self._lock:
            if self._state != "offered":
                return False
            self._state = state
            return True


async def on_owner(
    owner: asyncio.AbstractEventLoop,
    work: Callable[[], Awaitable[T]],
    timeout: float,
) -> tuple[bool, T | None]:
    """Run ``work()`` on ``owner``; ``(True, result)``, or ``(False, None)`` if not taken.

    Not taken means: the owner did not start it within ``timeout`` seconds, closed, or ended
    before taking it; the caller must do it itself. ``(True, None)``: taken, but the owner's
    loop ended before it finished (the caller checks what became of it).

    Example:
        >>> async def main():
        ...     async def work():
        ...         return "done"
        ...     return await on_owner(asyncio.get_running_loop(), work, 1.0)
        >>> asyncio.run(main())
        (True, 'done')
    """
    ticket = Ticket()

    async def run() -> T | None:
        if not ticket.take():
            return None
        return await work()

    try:
        future: concurrent.futures.Future[T | None] = asyncio.run_coroutine_threadsafe(run(), owner)
    except RuntimeError:  # the owner closed in the meantime
        return False, None
    waiting = asyncio.wrap_future(future)
    try:
        return True, await asyncio.wait_for(asyncio.shield(waiting), timeout)
    except asyncio.TimeoutError:
        if ticket.withdraw():
            future.cancel()
            return False, None
    except asyncio.CancelledError:
        if not _owner_cancelled(future):
            raise
        return (False, None) if ticket.withdraw() or not ticket.taken else (True, None)
    # Taken, still running on the owner (waiting for room in a full queue, say): its answer.
    try:
        return True, await waiting
    except asyncio.CancelledError:
        if not _owner_cancelled(future):
            raise
        return True, None


def _owner_cancelled(future: concurrent.futures.Future[Any]) -> bool:
    """True if the work was cancelled on the owner's side (its loop ended), not ours."""
    if not future.cancelled():
        return False
    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
    return cancelling is None or cancelling() == 0


async def run_on(owner: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the ``owner`` loop (another thread's) and await its result here.

    Example:
        >>> async def main():
        ...     return await run_on(asyncio.get_running_loop(), asyncio.sleep(0, "ok"))
        >>> asyncio.run(main())
        'ok'
    """
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, owner))


async def hand_over(
    owner: asyncio.AbstractEventLoop,
    accept: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    queued: Callable[[], T | None],
    inline: Callable[[], Awaitable[T]],
    take_over: Callable[[], Awaitable[T]],
    event: Event,
) -> T:
    """Hand an event to the owner loop; what to do when the owner does not take it.

    ``accept()`` runs on the owner, and its answer is returned. If the owner took the event but
    ended before answering, ``queued()`` answers if the event is held in the queue. Otherwise:
    if the owner still runs (it did not take the event within ``timeout``), ``inline()``
    delivers it on the caller's loop; if it has ended, ``take_over()`` (the caller's loop takes
    the queue over).

    Example:
        >>> from asgi_attribution import LeadEvent
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def main():
        ...     async def answer():
        ...         return "queued"
        ...     return await hand_over(asyncio.get_running_loop(), answer, timeout=1.0,
        ...         queued=lambda: None, inline=answer, take_over=answer, event=lead)
        >>> asyncio.run(main())
        'queued'
    """
    taken, result = await on_owner(owner, accept, timeout)
    if result is not None:
        return result
    held = queued() if taken else None
    if held is not None:
        return held
    if not alive(owner):
        return await take_over()
    logger.warning(
        "event %s: the event loop owning the queue did not take it within %gs: sent inline",
        event.event_id,
        timeout,
    )
    return await inline()
