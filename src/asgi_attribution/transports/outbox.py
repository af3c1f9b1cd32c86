"""Durable delivery: write each event to an outbox before ``track_lead`` returns, deliver from it.

Guarantees, in plain words:
- ``send`` returns only after the event is written to the store (``TrackResult.durable`` is
  True), so a crash, a deploy or an OOM kill after that point cannot lose it.
- Workers claim due events with a lease, make one HTTP attempt per claim, and then mark the event
  delivered, schedule its next attempt (same backoff and ``Retry-After`` rules as
  :class:`RetryPolicy`), or, after a final failure, keep it as a dead letter with its last error.
- A process that dies mid-delivery leaves its claims behind; once their lease expires any worker
  claims them again. Delivery is therefore at-least-once, and every attempt of an event carries
  the same ``Idempotency-Key``.
- ``flush``/``aclose`` deliver what they can within a timeout; what is left stays in the store
  (reported, not lost) for the next worker.

The store is pluggable (:class:`OutboxStore`): :class:`SQLiteOutbox` for one machine,
:class:`RedisOutbox` across machines.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import SecretStr

from .._exceptions import OutboxError
from ..events import AttributionError, DeliveryError, Event, validate_event
from ..providers import DUB, PIMMS, Provider, get_provider
from .background import ErrorCallback, _call
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .http import HTTPTransport, RetryPolicy, log_retry

__all__ = [
    "OutboxError",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "open_store",
]

logger = logging.getLogger("asgi_attribution")

State = Literal["pending", "inflight", "delivered", "dead"]
STATES: tuple[State, ...] = ("pending", "inflight", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event as the outbox stores it: plain JSON-able data, never a pickle or an API key.

    ``event`` is the event's ``model_dump(mode="json")`` without its ``kind``; ``handle`` is the
    store's own reference (a row id, a stream entry id).

    Example:
        >>> from asgi_attribution import DUB, LeadEvent
        >>> row = OutboxRow.from_delivery(Delivery(
        ...     LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u1"), DUB))
        >>> row.kind, row.provider, row.state, row.event["click_id"]
        ('lead', 'dub', 'pending', 'c1')
    """

    event_id: str
    provider: str
    kind: str
    event: dict[str, Any]
    state: State = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    first_attempt_at: float | None = None
    handle: str = field(default="", compare=False)

    @classmethod
    def from_delivery(cls, delivery: Delivery, *, now: float | None = None) -> OutboxRow:
        """The row for a new event, due at once."""
        now = time.time() if now is None else now
        data = delivery.event.model_dump(mode="json")
        kind = str(data.pop("kind"))
        return cls(
            event_id=delivery.event.event_id,
            provider=delivery.provider.name,
            kind=kind,
            event=data,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )

    def to_event(self) -> Event:
        """Rebuild and re-validate the event (raises :class:`InvalidEventError` if it no longer
        passes validation)."""
        return validate_event(self.kind, **self.event)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts by state and the age of the oldest undelivered event, in seconds.

    Example:
        >>> status = OutboxStatus({"pending": 2, "inflight": 1, "delivered": 5, "dead": 0}, 3.5)
        >>> status.unfinished
        3
    """

    counts: dict[str, int]
    oldest_pending_age: float | None = None

    @property
    def unfinished(self) -> int:
        """Events still to deliver: pending (including scheduled retries) or in flight."""
        return self.counts.get("pending", 0) + self.counts.get("inflight", 0)


class OutboxStore(abc.ABC):
    """Where an outbox keeps its events. Implement it to add a backend.

    A store must be safe to share between processes: :meth:`claim` hands a row to one claimant
    until the lease expires, and the ``delivered``/``retry_later``/``dead`` calls of a claimant
    whose lease was taken over may be ignored. All methods are coroutines; nothing may block the
    event loop.

    Example:
        >>> store = SQLiteOutbox("events.db")  # doctest: +SKIP
        >>> async def report():
        ...     async with store:
        ...         return (await store.status()).counts
    """

    #: A short description for messages (a path, a URL without password).
    description = "outbox"

    async def __aenter__(self) -> OutboxStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (and create the schema if allowed); idempotent. Raise :class:`OutboxError`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    @abc.abstractmethod
    async def append(self, row: OutboxRow) -> None:
        """Store a new pending row durably before returning."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> list[OutboxRow]:
        """Take up to ``limit`` due rows for ``lease`` seconds; ``attempts`` counts this one."""

    @abc.abstractmethod
    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered."""

    @abc.abstractmethod
    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Give a claimed row back, due again at ``at`` (Unix time), with its last error."""

    @abc.abstractmethod
    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep a claimed row as a dead letter with its last error."""

    @abc.abstractmethod
    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Give claimed rows back at once, as if not attempted (used at shutdown)."""

    @abc.abstractmethod
    async def unfinished(self) -> int:
        """How many rows are pending or in flight."""

    @abc.abstractmethod
    async def status(self) -> OutboxStatus:
        """Counts by state and the oldest undelivered event's age."""

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those with ``event_ids``) back to pending with a fresh
        budget; return how many."""

    @abc.abstractmethod
    async def purge_delivered(self, older_than: float) -> int:
        """Delete delivered rows last updated more than ``older_than`` seconds ago."""


def open_store(outbox: str | os.PathLike[str] | OutboxStore) -> OutboxStore:
    """A store from an option value: a store as is, a ``redis://`` URL, or a SQLite file path.

    Nothing is opened here (no file, no connection) until the store's ``open``.

    Example:
        >>> type(open_store("events.db")).__name__
        'SQLiteOutbox'
        >>> type(open_store("redis://127.0.0.1:6379/0")).__name__
        'RedisOutbox'
    """
    if isinstance(outbox, OutboxStore):
        return outbox
    text = os.fspath(outbox)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .outbox_redis import RedisOutbox

        return RedisOutbox(text)
    from .outbox_sqlite import SQLiteOutbox

    return SQLiteOutbox(text)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return  # its caller is gone with its event loop; the row itself was still written
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _Batcher:
    """Group concurrent appends into one write (one commit, one pipeline round trip).

    Each caller returns once the write holding its row succeeded; the rows that arrive while a
    write runs share the next one, so bursts cost one commit instead of one each.
    """

    def __init__(self, write: Callable[[list[OutboxRow]], Awaitable[None]]) -> None:
        self._write = write
        self._waiting: list[tuple[OutboxRow, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, row: OutboxRow) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((row, future))
        # A task of an event loop that ended without finishing would never run again.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        await future

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


class OutboxTransport(Transport):
    """Write every event to a durable outbox, and deliver from it in worker tasks.

    ``store`` is an :class:`OutboxStore`, a SQLite file path, or a ``redis://`` URL. By default
    events go over HTTP (``api_key``, ``base_url``, ``timeout`` as for :class:`HTTPTransport`),
    one attempt per claim (:meth:`HTTPTransport.attempt`); ``inner`` replaces that (a transport
    whose ``send`` raises :class:`DeliveryError` on failure).

    Options: ``deliver=False`` makes an append-only instance (web workers that leave delivery to
    ``asgi-attribution outbox deliver --follow``); ``concurrency`` deliveries at once;
    ``retry`` (:class:`RetryPolicy`) decides when an event is retried and when it becomes a dead
    letter; ``lease`` seconds a claim is held before another worker may take it over (must exceed
    one attempt, ``timeout``); ``poll_interval`` seconds between looks for due events when idle;
    ``shutdown_timeout`` seconds ``aclose`` spends delivering; ``on_error(delivery, exc)`` is
    called for each dead letter.

    Example:
        >>> transport = OutboxTransport("events.db", api_key="dub_xxx", concurrency=10)
        >>> tracker = Tracker("dub", transport=transport)  # doctest: +SKIP
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
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        concurrency: int = 10,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 20.0,
        on_error: ErrorCallback | None = None,
        stats: DeliveryStats | None = None,
        providers: Iterable[Provider] = (),
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if lease <= 0 or poll_interval <= 0:
            raise ValueError(
                f"lease and poll_interval must be > 0, got {lease} and {poll_interval}"
            )
        self.store = open_store(store)
        self.stats = stats if stats is not None else DeliveryStats()
        self.retry = retry or RetryPolicy()
        if inner is None and deliver:
            inner = HTTPTransport(
                api_key,
                base_url=base_url,
                timeout=timeout,
                retry=self.retry,
                max_connections=concurrency,
                stats=self.stats,
            )
        #: The transport each claimed event goes through (None for an append-only instance).
        self.inner = inner if deliver else None
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
            if isinstance(self.inner, HTTPTransport):
                # One attempt per claim: the store, not a sleeping task, holds the retry.
                await self.inner.attempt(delivery)
            else:
                await self.inner.send(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(row, delivery, exc)
        else:
            self.stats.sent += 1
            await self._store_call(self.store.delivered, row)

    async def _failed(self, row: OutboxRow, delivery: Delivery, exc: Exception) -> None:
        if not isinstance(exc, DeliveryError):
            # Our own validation errors are final; anything else may be a passing fault.
            retryable = not isinstance(exc, AttributionError)
            exc = DeliveryError(
                row.event_id, type(exc).__name__, str(exc) or "error", retryable=retryable
            )
        now = time.time()
        elapsed = now - (row.first_attempt_at or now)
        wait = self.retry.next_wait(row.attempts, elapsed, exc.retry_after)
        if exc.retryable and wait is not None:
            self.stats.retried += 1
            log_retry(exc, row.attempts, wait)
            await self._store_call(self.store.retry_later, row, now + wait, str(exc))
            if wait < self.poll_interval and self._loop is not None and self._wake is not None:
                # Due before the next poll: look again then, not a whole poll interval later.
                self._loop.call_later(wait, self._wake.set)
            return
        if exc.retryable:
            exc.gave_up(row.attempts, elapsed)
        self.stats.failed += 1
        logger.error("event %s is a dead letter: %s", row.event_id, exc)
        await self._store_call(self.store.dead, row, str(exc))
        await _call(self.on_error, delivery, exc)

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
            grace = float(getattr(self.inner, "timeout", 10.0)) + 1.0
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        unfinished = [row for task, row in tasks.items() if task.cancelled()]
        if unfinished:
            await self._store_call(self.store.release, unfinished)


def _restart_budget(row: OutboxRow, now: float) -> OutboxRow:
    """A dead letter sent back to pending: a fresh budget of attempts and time."""
    return replace(
        row,
        state="pending",
        attempts=0,
        first_attempt_at=None,
        next_attempt_at=now,
        updated_at=now,
    )
