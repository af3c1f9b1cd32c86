"""The life of an :class:`OutboxTransport` around its store: opening again, shutting down.

Kept apart from :mod:`.transport` (which writes and delivers) so each stays small.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..base import Transport
from .fallback import MemoryFallback
from .loop import DeliveryLoop
from .store import OutboxStore

__all__ = ["OutboxLife", "close_transport", "keep_opening"]

logger = logging.getLogger("asgi_attribution")


class OutboxLife(Protocol):
    """What these functions use of an :class:`OutboxTransport` (no import of it: no circle)."""

    store: OutboxStore
    delivery: DeliveryLoop | None
    fallback: MemoryFallback | None
    sender: Transport
    append_timeout: float
    shutdown_timeout: float
    timeout: float
    left_in_store: int

    def opened(self) -> None: ...
    def in_running_loop(self) -> bool: ...
    def reset(self) -> None: ...
    async def flush(self, timeout: float | None = None) -> None: ...


#: Seconds between attempts to open a store that failed at startup (doubling up to the last).
OPEN_BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def keep_opening(transport: OutboxLife) -> None:
    """Open the store again until it opens, then start delivering (logged at each failure)."""
    store = transport.store
    attempt = 0
    while True:
        wait = OPEN_BACKOFF[min(attempt, len(OPEN_BACKOFF) - 1)]
        await asyncio.sleep(wait)
        attempt += 1
        try:
            await asyncio.wait_for(store.open(), max(10.0, transport.append_timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.ERROR if attempt % 10 == 0 else logging.WARNING
            logger.log(level, "outbox %s still unavailable: %s", store.description, exc)
            continue
        logger.warning("outbox %s opened after %d retries", store.description, attempt)
        transport.opened()
        return


async def close_transport(transport: OutboxLife) -> None:
    """Deliver within ``shutdown_timeout``, stop the loop, report what is left, close all."""
    store = transport.store
    try:
        if not transport.in_running_loop():
            return  # the loop that opened it is gone: nothing of it can be awaited here
        delivery = transport.delivery
        if delivery is not None:
            await transport.flush(transport.shutdown_timeout)
            await delivery.stop(transport.timeout + 1.0)
            try:
                transport.left_in_store = await store.unfinished()
            except Exception:
                transport.left_in_store = -1
            if transport.left_in_store and getattr(store, "lost", False):
                logger.error(
                    "%s events were left in the outbox file %s, which was deleted or replaced "
                    "while open: they are lost with this process (events stored after that "
                    "went to the fallback)",
                    "some" if transport.left_in_store < 0 else transport.left_in_store,
                    store.description,
                )
            elif transport.left_in_store:
                logger.warning(
                    "%s events left in the outbox %s at shutdown; they are stored and will be "
                    "delivered by the next worker",
                    "some" if transport.left_in_store < 0 else transport.left_in_store,
                    store.description,
                )
        if transport.fallback is not None:
            await transport.fallback.aclose()
        await transport.sender.aclose()
    finally:
        transport.reset()
        await store.close()
