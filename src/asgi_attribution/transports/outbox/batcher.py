"""Group commit: the appends arriving together share one write (one commit, one round trip).

Each caller returns once the write holding its row succeeded, or raises what it raised. Two
ways to write: ``write`` (a coroutine: a thread's commit, a pipeline) for every store, and for
a store whose commit is cheap enough to run on the event loop (SQLite with
``synchronous="normal"``), ``write_now``: called on the loop with the first row of a loop
iteration, then with the rows added after it in that iteration, it commits them without
waiting (True) or declines (False: another writer holds the lock), and the rows then take
``write``. ``timeout`` bounds each row's wait on ``write``
with one timer per batch, so a hung store never holds a signup longer.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable

from .rows import OutboxRow

__all__ = ["AppendBatcher"]

_Waiting = builtins.list[tuple[OutboxRow, "asyncio.Future[None]"]]


class AppendBatcher:
    """Group concurrent appends into one write.

    Example:
        >>> import asyncio
        >>> from asgi_attribution.transports.base import Delivery
        >>> writes = []
        >>> async def write(rows):
        ...     writes.append(len(rows))
        >>> batcher = AppendBatcher(write)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def burst():
        ...     rows = [OutboxRow.from_delivery(Delivery(lead, DUB)) for _ in range(5)]
        ...     await asyncio.gather(*(batcher.add(row) for row in rows))
        >>> asyncio.run(burst())
        >>> writes  # five appends at once, one write
        [5]
    """

    def __init__(
        self,
        write: Callable[[builtins.list[OutboxRow]], Awaitable[None]],
        *,
        write_now: Callable[[builtins.list[OutboxRow]], bool] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._write = write
        self._write_now = write_now
        self._timeout = timeout
        self._waiting: _Waiting = []  # for ``write``
        # This iteration's rows for ``write_now``, per loop: a loop that ended before its
        # commit ran leaves only its own rows behind.
        self._gathering: dict[asyncio.AbstractEventLoop, _Waiting] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(self, row: OutboxRow) -> None:
        """Return once ``row`` is written (raise what the write raised)."""
        loop = asyncio.get_running_loop()
        write_now = self._write_now
        gathering = self._gathering.get(loop) if write_now is not None else None
        if write_now is not None and gathering is None:
            # The first row of this iteration is committed at once (a lone signup waits for
            # nothing); the rows after it gather until the iteration ends.
            self._gathering[loop] = []
            loop.call_soon(self._commit_now, loop)
            if write_now([row]):
                return
        future: asyncio.Future[None] = loop.create_future()
        if gathering is not None:
            gathering.append((row, future))
        else:
            self._queue([(row, future)], loop)
        await future

    def _commit_now(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop)
        if not batch:
            return
        assert self._write_now is not None
        try:
            written = self._write_now([row for row, _ in batch])
        except Exception as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        if written:
            for _, future in batch:
                _settle(future, None)
        else:
            self._queue(batch, loop)

    def _queue(self, batch: _Waiting, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.extend(batch)
        if self._timeout is not None:
            # One timer for the batch: its rows fail (their callers go on) if still unwritten.
            futures = [future for _, future in batch]
            loop.call_later(self._timeout, _expire, futures, self._timeout)
        # A task of an event loop that ended without finishing would never run again.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._write([row for row, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    _settle(future, exc)
            else:
                for _, future in batch:
                    _settle(future, None)

    async def wait(self) -> None:
        """Let the write in progress finish (before closing the store)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _expire(futures: builtins.list[asyncio.Future[None]], timeout: float) -> None:
    error = asyncio.TimeoutError(f"not written within append_timeout ({timeout:g}s)")
    for future in futures:
        _settle(future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return  # its caller is gone with its event loop; the row itself was still written
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
