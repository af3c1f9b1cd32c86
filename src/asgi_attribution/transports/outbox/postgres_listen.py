"""Wake-ups for PostgreSQL outbox workers: one ``LISTEN`` connection per store.

PostgreSQL delivers a ``NOTIFY`` when the transaction that sent it commits, so a worker hears of
an event as soon as it can be claimed, and never of a rolled-back one. A lost connection (a
database restart) is reopened with a growing pause; each reconnection counts as a wake-up, since
notifications sent meanwhile were missed. Polling remains the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["Listener"]

logger = logging.getLogger("asgi_attribution")


class Listener:
    """Listen on ``channel`` in a background task; :meth:`wait` returns when woken.

    Example:
        >>> listener = Listener("postgresql://app@db/app", "asgi_attribution_outbox")
        >>> listener.running  # nothing connects before start()
        False
    """

    def __init__(self, conninfo: str, channel: str, *, connect_timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.connect_timeout = connect_timeout
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the background task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start listening (idempotent); call from the event loop that will wait."""
        if self.running:
            return
        self._woken = asyncio.Event()
        self._woken.set()  # whatever was sent before we listened: look once
        self._task = asyncio.get_running_loop().create_task(
            self._listen(), name=f"asgi-attribution-listen-{self.channel}"
        )

    def clear(self) -> None:
        """Forget past wake-ups (call before looking for work, so none is missed after)."""
        if self._woken is not None:
            self._woken.clear()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came."""
        if self._woken is None or timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self) -> None:
        import psycopg

        pause = 0.1
        while True:
            conn: Any = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=max(2, round(self.connect_timeout)),
                )
                await conn.execute(f'LISTEN "{self.channel}"')
                pause = 0.1
                if self._woken is not None:
                    self._woken.set()  # anything committed while we were away
                async for _ in conn.notifies():
                    if self._woken is not None:
                        self._woken.set()
            except psycopg.Error as exc:
                logger.info("outbox listener on %s: %s; reconnecting", self.channel, exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
