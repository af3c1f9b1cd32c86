"""Reporting event ids in log lines a log shipper keeps whole (at most 8 KB each).

Example:
    >>> id_lines("2 events not delivered", ["evt_1", "evt_2"])
    ['2 events not delivered: evt_1, evt_2']
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Delivery, DeliveryStats

__all__ = ["MAX_LINE_BYTES", "id_chunks", "id_lines", "log_ids", "notify", "report_undelivered"]

logger = logging.getLogger("asgi_attribution")

#: The longest log line written with event ids (shippers split or cut longer ones).
MAX_LINE_BYTES = 8 * 1024


def id_chunks(
    head: str, ids: Iterable[str], limit: int = MAX_LINE_BYTES
) -> list[tuple[str, list[str]]]:
    """``(line, ids on it)`` pairs: ``head: id, id, ...`` in lines of at most ``limit`` bytes.

    Lines after the first say they continue (``head (continued): ...``).

    Example:
        >>> chunks = id_chunks("held", [f"evt_{i:03d}" for i in range(10)], limit=40)
        >>> all(len(line.encode()) <= 40 for line, _ in chunks), len(chunks)
        (True, 4)
        >>> chunks[1]
        ('held (continued): evt_004, evt_005', ['evt_004', 'evt_005'])
    """
    chunks: list[tuple[str, list[str]]] = []
    line, on_line = head + ": ", list[str]()
    for event_id in ids:
        piece = ", " + event_id if on_line else event_id
        if on_line and len((line + piece).encode()) > limit:
            chunks.append((line, on_line))
            line, on_line, piece = head + " (continued): ", [], event_id
        line += piece
        on_line.append(event_id)
    if on_line:
        chunks.append((line, on_line))
    return chunks


def id_lines(head: str, ids: Iterable[str], limit: int = MAX_LINE_BYTES) -> list[str]:
    """The lines of :func:`id_chunks`.

    Example:
        >>> id_lines("2 events not delivered", ["evt_1", "evt_2"])
        ['2 events not delivered: evt_1, evt_2']
    """
    return [line for line, _ in id_chunks(head, ids, limit)]


def log_ids(level: int, head: str, ids: list[str]) -> None:
    """Log ``head`` with every id in ``ids``, in lines of at most :data:`MAX_LINE_BYTES`.

    Each record carries ``event_ids`` (the ids on that line) as a structured field.

    Example:
        >>> log_ids(logging.WARNING, "1 event not yet delivered", ["evt_1"])
    """
    for line, on_line in id_chunks(head, ids):
        logger.log(level, "%s", line, extra={"event_ids": on_line})


async def notify(callback: Callable[..., object] | None, *args: object) -> None:
    """Call a user's callback (sync or async); its failure is logged, never raised.

    Example:
        >>> import asyncio
        >>> asyncio.run(notify(print, "event evt_1", "dropped"))
        event evt_1 dropped
    """
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a user's callback must not stop delivery
        logger.exception("delivery callback %r failed", callback)


async def report_undelivered(
    undelivered: list[Delivery],
    reason: str,
    stats: DeliveryStats,
    on_drop: Callable[..., object] | None,
) -> None:
    """Report events given up at shutdown: ERROR lines by id, ``stats.dropped``, ``on_drop``.

    Example:
        >>> import asyncio
        >>> asyncio.run(report_undelivered([], "not delivered", DeliveryStats(), None))
    """
    if not undelivered:
        return
    ids = [d.event.event_id for d in undelivered]
    log_ids(logging.ERROR, f"{len(undelivered)} events {reason}", ids)
    for delivery in undelivered:
        stats.count("dropped", delivery, reason="shutdown")
        await notify(on_drop, delivery, reason)
