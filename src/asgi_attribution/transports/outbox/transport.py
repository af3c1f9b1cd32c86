"""Durable delivery: write each event to an outbox before ``track_lead`` returns, deliver from it.

Guarantees, in plain words:
- ``send`` returns only after the event is written to the store (``TrackResult.durable`` is
  True), so a crash, a deploy or an OOM kill after that point cannot lose it.
- Workers claim due events with a lease, make one attempt per claim (``inner.attempt``), and
  then mark the event delivered, schedule its next attempt (the one retry step, with
  ``inner.retry``), or, after a final failure, keep it as a dead letter with its last error.
- A process that dies mid-delivery leaves its claims behind; once their lease expires any worker
  claims them again. Delivery is therefore at-least-once, and every attempt of an event carries
  the same ``Idempotency-Key``.
- ``flush``/``aclose`` deliver what they can within a timeout; what is left stays in the store
  (reported, not lost) for the next worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

from ..._exceptions import AttributionError, DeliveryError
from ...providers import DUB, PIMMS, Provider, get_provider
from ..background import ErrorCallback, notify
from ..base import Delivery, DeliveryStats, TrackResult, Transport
from ..http import HTTPTransport
from ..retry import RetryPolicy, next_retry
from .store import OutboxRow, OutboxStore, open_store

__all__ = ["OutboxTransport"]

logger = logging.getLogger("asgi_attribution")


class OutboxTransport(Transport):
    """Write every event to a durable outbox, and deliver from it in worker tasks.

    ``store`` is an :class:`OutboxStore`, a SQLite file path, or a ``redis://`` URL. Each claimed
    event gets one attempt through ``inner`` (any :class:`Transport`); its ``retry`` policy
    decides when an event is tried again and when it becomes a dead letter. Without ``inner``,
    an :class:`HTTPTransport` is built from ``api_key``, ``base_url``, ``timeout`` and ``retry``.

    Options: ``deliver=False`` makes an append-only instance (web workers that leave delivery to
    ``asgi-attribution outbox deliver --follow``); ``concurrency`` attempts at once; ``lease``
    seconds a claim is held before another worker may take it over (must exceed one attempt,
    ``inner.timeout``); ``poll_interval`` seconds between looks for due events when idle;
    ``shutdown_timeout`` seconds ``aclose`` spends delivering; ``on_error(delivery, exc)`` is
    called for each dead letter.

    Example:
        >>> import asyncio, os, tempfile
        >>> memory = MemoryTransport()
        >>> path = os.path.join(tempfile.mkdtemp(), "events.db")
        >>> transport = OutboxTransport(path, memory, concurrency=10, poll_interval=0.05)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def signup():
        ...     result = await transport.send(Delivery(lead, DUB))  # stored before it returns
        ...     await transport.aclose()  # delivers within shutdown_timeout
        ...     return result.durable
        >>> asyncio.run(signup()), len(memory.events), transport.stats.sent
        (True, 1, 1)
    """

    counts_outcomes = True

    def __init__(
        self,
        store: str | os.PathLike[str] | OutboxStore,
        inner: Transport | None = None,
        *,
        deliver: bool = True,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 20.0,
        on_error: ErrorCallback | None = None,
        stats: DeliveryStats | None = None,
        providers: Iterable[Provider] = (),
    ) -> None:
        concurrency = 10 if concurrency is None else concurrency
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if lease <= 0 or poll_interval <= 0:
            raise ValueError(
                f"lease and poll_interval must be > 0, got {lease} and {poll_interval}"
            )
        http_options = {"api_key": api_key, "base_url": base_url, "timeout": timeout}
        given = [
            name for name, value in {**http_options, "retry": retry}.items() if value is not None
        ]
        if inner is not None and given:
            raise TypeError(
                f"OutboxTransport: {', '.join(given)} build the HTTP transport used when no"
                " inner is given; set them on inner instead"
            )
        self.store = open_store(store)
        if stats is not None:
            self.stats = stats
        if inner is None and deliver:
            inner = HTTPTransport(
                api_key,
                base_url=base_url,
                timeout=10.0 if timeout is None else timeout,
                retry=retry,
                concurrency=concurrency,
                stats=self.stats,
            )
        #: The transport each claimed event goes through (None for an append-only instance).
        self.inner = inner if deliver else None
        if self.inner is not None:
            self.retry, self.timeout = self.inner.retry, self.inner.timeout
        self.deliver = deliver
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.shutdown_timeout = shutdown_timeout
        self.on_error = on_error
        #: Events left undelivered in the store by the last ``aclose`` (safe, not lost).
        self.left_in_store = 0
        self._providers = {p.name: p for p in (DUB, PIMMS, *providers)}
        # Loop state is created in start(), never at construction, import or fork.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: dict[asyncio.Task[None], OutboxRow] = {}
        self._stopping = False

    def __repr__(self) -> str:
        return f"OutboxTransport({self.store.description!r}, deliver={self.deliver})"

    async def start(self) -> None:
        """Open the store and, unless append-only, start the delivery loop; idempotent."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            # A new event loop without a clean shutdown: the old loop's claims come back when
            # their lease expires; nothing was only in memory.
            self._tasks.clear()
            self._runner = None
        await self.store.open()
        self._loop = loop
        if self.inner is not None:
            await self.inner.start()
            self._wake = asyncio.Event()
            self._stopping = False
            self._runner = loop.create_task(self._run(), name="asgi-attribution-outbox")

    async def send(self, delivery: Delivery) -> TrackResult:
        """Write the event to the store, then return ``queued`` with ``durable=True``.

        Raises :class:`DeliveryError` (``code="outbox_write_failed"``, retryable) if the store
        cannot take it. A lead with ``mode="wait"`` is stored too: the handler never waits on
        the provider.
        """
        if self._loop is not asyncio.get_running_loop():
            await self.start()
        self._providers.setdefault(delivery.provider.name, delivery.provider)
        try:
            await self.store.append(OutboxRow.from_delivery(delivery))
        except Exception as exc:
            event_id = delivery.event.event_id
            logger.error("event %s not stored in %s: %s", event_id, self.store.description, exc)
            raise DeliveryError(event_id, "outbox_write_failed", str(exc), retryable=True) from exc
        self.stats.queued += 1
        if self._wake is not None:
            self._wake.set()
        return TrackResult("queued", delivery.event, durable=True)

    # -- delivery loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None and self._loop is not None
        while not self._stopping:
            wake.clear()
            free = self.concurrency - len(self._tasks)
            rows: list[OutboxRow] = []
            if free > 0:
                try:
                    rows = await self.store.claim(free, self.lease)
                except Exception as exc:  # a locked or unreachable store: try again later
                    logger.warning("outbox %s: claim failed: %s", self.store.description, exc)
                if self._stopping:  # shutdown began during the claim: give the rows back
                    await self._store_call(self.store.release, rows)
                    return
                for row in rows:
                    task = self._loop.create_task(self._deliver(row))
                    self._tasks[task] = row
                    task.add_done_callback(self._done)
            if free > 0 and len(rows) == free:
                continue  # there may be more due right now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if self._wake is not None:
            self._wake.set()

    def _provider(self, name: str) -> Provider:
        return self._providers.get(name) or get_provider(name)

    async def _deliver(self, row: OutboxRow) -> None:
        assert self.inner is not None
        try:
            delivery = Delivery(row.to_event(), self._provider(row.provider))
        except Exception as exc:  # the row no longer makes an event: retrying cannot help
            await self._store_call(self.store.dead, row, f"cannot restore event: {exc}")
            self.stats.failed += 1
            logger.error("event %s is a dead letter: cannot restore it: %s", row.event_id, exc)
            return
        try:
            # One attempt per claim: the store, not a sleeping task, holds the retry.
            await self.inner.attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(row, delivery, exc)
        else:
            self.stats.sent += 1
            await self._store_call(self.store.delivered, row)

    async def _failed(self, row: OutboxRow, delivery: Delivery, exc: Exception) -> None:
        assert self.inner is not None
        if not isinstance(exc, DeliveryError):
            # Our own validation errors are final; anything else may be a passing fault.
            retryable = not isinstance(exc, AttributionError)
            exc = DeliveryError(
                row.event_id, type(exc).__name__, str(exc) or "error", retryable=retryable
            )
        now = time.time()
        elapsed = now - (row.first_attempt_at or now)
        wait = next_retry(
            exc, self.inner.retry, attempts=row.attempts, elapsed=elapsed, stats=self.stats
        )
        if wait is not None:
            await self._store_call(self.store.retry_later, row, now + wait, str(exc))
            if wait < self.poll_interval and self._loop is not None and self._wake is not None:
                # Due before the next poll: look again then, not a whole poll interval later.
                self._loop.call_later(wait, self._wake.set)
            return
        self.stats.failed += 1
        logger.error("event %s is a dead letter: %s", row.event_id, exc)
        await self._store_call(self.store.dead, row, str(exc))
        await notify(self.on_error, delivery, exc)

    async def _store_call(self, method: Any, *args: Any) -> None:
        try:
            await method(*args)
        except Exception as exc:
            # The claim's lease runs out and another attempt follows: at-least-once, not lost.
            logger.warning(
                "outbox %s: could not record an outcome: %s", self.store.description, exc
            )

    # -- flush and shutdown ------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until no event is pending or in flight in the store (or ``timeout`` passes).

        Events scheduled for a later retry count as pending. An append-only instance returns
        at once: its events are already safe.
        """
        if self.inner is None or self._loop is not asyncio.get_running_loop():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                left = await self.store.unfinished()
            except Exception as exc:
                logger.warning("outbox %s: %s", self.store.description, exc)
                left = -1
            if left == 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "flush timed out after %gs with %d events left in the outbox %s",
                    timeout,
                    left,
                    self.store.description,
                )
                return
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        """Deliver within ``shutdown_timeout``, give back unfinished claims, close the store.

        What is left stays in the store and is logged (``left_in_store``); it is not lost.
        """
        if self._loop is None:
            return
        if self._loop is not asyncio.get_running_loop():
            self._loop = None
            self._tasks.clear()
            self._runner = None
            await self.store.close()
            return
        try:
            if self.inner is not None:
                await self.flush(self.shutdown_timeout)
                await self._stop_delivering()
                try:
                    self.left_in_store = await self.store.unfinished()
                except Exception:
                    self.left_in_store = -1
                if self.left_in_store:
                    logger.warning(
                        "%s events left in the outbox %s at shutdown; they are stored and "
                        "will be delivered by the next worker",
                        "some" if self.left_in_store < 0 else self.left_in_store,
                        self.store.description,
                    )
                await self.inner.aclose()
        finally:
            self._loop = None
            self._wake = None
            await self.store.close()

    async def _stop_delivering(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            # Not a plain cancel: a claim cancelled mid-way still commits in the store, and its
            # rows would wait for their lease to expire. The runner stops between claims.
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            _, pending = await asyncio.wait([runner], timeout=60)
            for task in pending:
                task.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        tasks = dict(self._tasks)
        if tasks:
            # Attempts already on the wire finish and record their outcome (each is one HTTP
            # attempt, bounded by its timeout): cancelled mid-flight, the next worker would
            # send them again.
            grace = (self.inner.timeout if self.inner is not None else self.timeout) + 1.0
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        unfinished = [row for task, row in tasks.items() if task.cancelled()]
        if unfinished:
            await self._store_call(self.store.release, unfinished)
