"""Durable delivery: write each event to an outbox before ``track_lead`` returns, deliver from it.

Guarantees, in plain words:
- ``send`` returns ``durable=True`` only after the event is written to a store that can keep
  that promise (:attr:`OutboxStore.durable`), so a crash, a deploy or an OOM kill after that
  point cannot lose it. A store that cannot take the event within ``append_timeout`` never
  fails the signup: the event goes to the in-memory fallback (``durable=False``), or, with
  ``fallback=None``, ``send`` raises :class:`DeliveryError` ``code="outbox_write_failed"``.
- The fallback (:class:`MemoryFallback`) is a :class:`BackgroundTransport` over the same inner
  transport. An outage (Redis down, a full disk, a lock held too long, a deleted file) is
  logged at ERROR once when it starts and once when it ends; meanwhile the store is tried
  again at most every ``probe_interval`` seconds and the events in between go to memory.
- A store that cannot be opened at startup does not stop the app: the failure is logged at
  ERROR and the store is opened again in the background (:class:`OutboxLife`).
- The delivery loop (:class:`DeliveryLoop`) claims due rows with a lease, makes one attempt per
  claim (``inner.attempt``), then marks the row delivered (with the provider's outcome),
  schedules its next attempt (the one retry step), or keeps it as a dead letter with its last
  error, in the store's clock. A fault of the whole integration pauses claiming (the one
  :class:`~asgi_attribution.transports._pause.Pause`) instead of spending any event's budget.
- A process that dies mid-delivery leaves its claims behind; once their lease expires any worker
  claims them again. Delivery is therefore at-least-once, and every attempt of an event carries
  the same ``Idempotency-Key``.
- ``flush``/``aclose`` deliver what they can within a timeout; what is left stays in the store
  (reported, not lost) for the next worker.

One concept, the outbox as a transport: appending, the fallback it needs when appending fails,
the loop that delivers the rows, and its opening and shutdown are one life cycle sharing one
state; a reader follows an event through it in one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal, Protocol

from pydantic import SecretStr

from ..._exceptions import AttributionError, DeliveryError
from ..._providers import DUB, PIMMS, Provider, get_provider
from .._background import BackgroundTransport, DropCallback, ErrorCallback, notify
from .._base import Delivery, DeliveryStats, RetryPolicy, TrackResult, Transport, next_retry
from .._http import HTTPTransport
from .._pause import Pause, describe, is_integration_fault, pause_for
from ._store import AppendUnconfirmed, OutboxRow, OutboxStore, append_within, open_store

__all__ = [
    "DeliveredCallback",
    "DeliveryLoop",
    "MemoryFallback",
    "OutboxLife",
    "OutboxTransport",
    "close_transport",
    "keep_opening",
]


logger = logging.getLogger("asgi_attribution")

#: Seconds an event waits in memory for the store's answer to a write that outlived
#: ``append_timeout`` before it is sent from memory anyway.
HOLD_LIMIT = 60.0


class MemoryFallback:
    """The in-memory queue of an outbox and the bookkeeping of its outages.

    The queue is a :class:`BackgroundTransport` over ``inner``, built with ``queue`` (its
    options: ``queue_size``, ``queue_full_timeout``, ``concurrency``, ``pause_interval``,
    ``on_drop``, ``on_error``, ``on_delivered``): an event it holds is delivered, or reported
    by id to ``on_drop`` (queue full, or left at shutdown) or ``on_error`` (failed).

    Example:
        >>> import asyncio
        >>> memory = MemoryTransport()
        >>> fallback = MemoryFallback("events.db", memory, DeliveryStats(),
        ...                           on_delivered=lambda d, r: print("delivered", r.status))
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def outage():
        ...     fallback.failed("disk full")
        ...     result = await fallback.send(Delivery(lead, DUB))
        ...     fallback.recovered()
        ...     await fallback.aclose()
        ...     return result.status, result.durable, result.accepted
        >>> asyncio.run(outage()), len(memory.events)
        delivered sent
        (('queued', False, False), 1)
    """

    def __init__(
        self,
        description: str,
        inner: Transport,
        stats: DeliveryStats,
        *,
        probe_interval: float = 1.0,
        shutdown_timeout: float = 20.0,
        **queue: Any,
    ) -> None:
        self.description = description
        self.inner = inner
        self.stats = stats
        self.probe_interval = probe_interval
        self.shutdown_timeout = shutdown_timeout
        #: Events sent to memory during the current outage (0 when there is none).
        self.count = 0
        #: Events sent to memory since the process started.
        self.total = 0
        self.cause: str | None = None
        self._next_try = 0.0
        # Built now, so a bad option fails at construction; its loop state comes at first use.
        self.queue = BackgroundTransport(
            inner, stats=stats, shutdown_timeout=shutdown_timeout, **queue
        )
        self._used = False
        #: Events whose store write was sent but not confirmed in time, until the store answers.
        self.held: dict[asyncio.Task[None], Delivery] = {}

    @property
    def in_outage(self) -> bool:
        """True from a store failure until an append succeeds again."""
        return self.cause is not None

    def should_try_store(self) -> bool:
        """False while an outage is recent: send to memory without waiting on the store."""
        if self.cause is None:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.probe_interval
        return True

    def failed(self, cause: str) -> None:
        """The store refused an append: an outage starts (logged once) or goes on."""
        self._next_try = time.monotonic() + self.probe_interval
        if self.cause is None:
            self.cause = cause
            logger.error(
                "outbox %s cannot store events (%s): they go to the in-memory queue (not "
                "durable: lost if this process dies) until the store takes appends again",
                self.description,
                cause,
            )

    def recovered(self) -> None:
        """An append succeeded: the outage is over (logged with how many went to memory)."""
        if self.cause is None:
            return
        logger.error(
            "outbox %s takes appends again; %d events during the outage (%s) went to the "
            "in-memory queue instead, not durably",
            self.description,
            self.count,
            self.cause,
        )
        self.cause, self.count = None, 0

    async def send(self, delivery: Delivery) -> TrackResult:
        """Queue ``delivery`` in memory; the result says ``durable=False``."""
        self.count += 1
        self.total += 1
        return await self._enqueue(delivery)

    async def _enqueue(self, delivery: Delivery) -> TrackResult:
        self._used = True
        result = await self.queue.send(delivery)
        if result.status == "queued" and result.durable:  # never claim what memory cannot keep
            result = TrackResult("queued", delivery.event)
        return result

    def hold(self, delivery: Delivery, stored: asyncio.Future[bool]) -> TrackResult:
        """Keep ``delivery`` here while its store write (sent, not confirmed within
        ``append_timeout``) is unanswered: sent from memory only if the store did not take it,
        so a store that answers late never makes a second delivery."""
        self.count += 1
        self.total += 1
        task = asyncio.get_running_loop().create_task(self._after_store(delivery, stored))
        self.held[task] = delivery
        task.add_done_callback(self._unhold)
        return TrackResult("queued", delivery.event)

    def _unhold(self, task: asyncio.Task[None]) -> None:
        self.held.pop(task, None)

    async def _after_store(self, delivery: Delivery, stored: asyncio.Future[bool]) -> None:
        try:
            taken = await asyncio.wait_for(asyncio.shield(stored), HOLD_LIMIT)
        except asyncio.TimeoutError:
            taken = False
            logger.warning(
                "event %s: the store has not answered its write in %gs; sent from memory "
                "(delivered twice if that write still lands)",
                delivery.event.event_id,
                HOLD_LIMIT,
            )
        if taken:
            logger.info(
                "event %s: stored after all, delivered from the store", delivery.event.event_id
            )
        else:
            await self._enqueue(delivery)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for the in-memory queue to deliver what it holds."""
        if self.held:
            await asyncio.wait(list(self.held), timeout=timeout)
        if self._used:
            await self.queue.flush(timeout)

    async def aclose(self) -> None:
        """Deliver what the queue holds within ``shutdown_timeout``; report the outage."""
        if self.cause is not None and self.count:
            logger.error(
                "outbox %s was unavailable until shutdown (%s): %d events went to the "
                "in-memory queue, delivered now within %gs",
                self.description,
                self.cause,
                self.count,
                self.shutdown_timeout,
            )
        held = list(self.held)
        if held:  # the store's answer, or the memory copy sent when it does not come
            _, unanswered = await asyncio.wait(held, timeout=self.shutdown_timeout)
            late = [(task, self.held[task]) for task in unanswered if task in self.held]
            for task, _ in late:
                task.cancel()
            await asyncio.gather(*(task for task, _ in late), return_exceptions=True)
            for _, delivery in late:
                logger.warning(
                    "event %s: no answer from the store to its write by shutdown; sent from "
                    "memory (delivered twice if that write still lands)",
                    delivery.event.event_id,
                )
                await self._enqueue(delivery)
        if self._used:  # a queue never used has nothing to deliver (nor its own loop)
            self._used = False
            await self.queue.aclose()


#: ``on_delivered(delivery, result)``: called (sync or async) for each event the provider took.
DeliveredCallback = Callable[[Delivery, TrackResult], Any]


class DeliveryLoop:
    """The claim-attempt-record loop of one :class:`OutboxTransport` in one event loop.

    Built and started by the transport (see its options); holds the tasks of the attempts
    in flight so that shutdown can let them finish.
    """

    def __init__(
        self,
        store: OutboxStore,
        inner: Transport,
        stats: DeliveryStats,
        provider: Callable[[str], Provider],
        pause: Pause,
        *,
        concurrency: int,
        lease: float,
        poll_interval: float,
        maintenance_interval: float,
        on_error: Callable[..., Any] | None,
        on_delivered: DeliveredCallback | None,
    ) -> None:
        self.store, self.inner, self.stats, self.pause = store, inner, stats, pause
        self._provider = provider
        self.concurrency, self.lease, self.poll_interval = concurrency, lease, poll_interval
        self.maintenance_interval = maintenance_interval
        self.on_error, self.on_delivered = on_error, on_delivered
        self.tasks: dict[asyncio.Task[None], OutboxRow] = {}
        self.cut_short: list[OutboxRow] = []  # claims of attempts the loop's end cancelled
        self.stopping = False
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._next_maintenance = 0.0
        self._runner = self._loop.create_task(self._run(), name="asgi-attribution-outbox")

    def wake(self) -> None:
        """Look for due rows now (a new event was stored)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self.stopping:
            self._wake.clear()
            await self._maintain()
            probing = self.pause.active
            if probing and (self.tasks or not self.pause.probe_due()):
                await self._sleep(min(self.pause.wait(), self.poll_interval))
                continue
            free = 1 if probing else self.concurrency - len(self.tasks)
            rows: list[OutboxRow] = []
            if free > 0:
                try:
                    rows = await self.store.claim(free, self.lease)
                except Exception as exc:  # a locked or unreachable store: try again later
                    logger.warning("outbox %s: claim failed: %s", self.store.description, exc)
                if self.stopping:  # shutdown began during the claim: give the rows back
                    await self.record(self.store.release, rows)
                    return
                for row in rows:
                    task = self._loop.create_task(self._deliver(row))
                    self.tasks[task] = row
                    task.add_done_callback(self._done)
            if free > 0 and len(rows) == free and not probing:
                continue  # there may be more due right now
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.maintenance_interval
        try:
            await self.store.maintain()
        except Exception as exc:
            logger.warning("outbox %s: maintenance failed: %s", self.store.description, exc)

    @property
    def ended(self) -> bool:
        """True once the claiming task ended without :meth:`stop` (its loop is ending)."""
        return self._runner.done() and not self.stopping

    def _done(self, task: asyncio.Task[None]) -> None:
        row = self.tasks.pop(task, None)
        if row is not None and task.cancelled() and not self.stopping:
            self.cut_short.append(row)  # the loop is ending: the drain gives the claim back
        self._wake.set()

    async def _deliver(self, row: OutboxRow) -> None:
        limit = self.inner.retry.max_attempts
        if row.attempts > limit:
            # Claimed again and again without an outcome: each attempt killed its worker (or
            # stalled past the lease). Stop here rather than take down every worker in turn.
            error = f"claimed {row.attempts} times without an outcome (limit {limit})"
            await self.record(self.store.dead, replace(row, error_code="no_outcome"), error)
            self.stats.failed += 1
            logger.error("event %s is a dead letter: %s", row.event_id, error)
            return
        try:
            delivery = Delivery(row.to_event(), self._provider(row.provider)).from_queue()
        except Exception as exc:  # the row no longer makes an event: retrying cannot help
            await self.record(self.store.dead, row, f"cannot restore event: {exc}")
            self.stats.failed += 1
            logger.error("event %s is a dead letter: cannot restore it: %s", row.event_id, exc)
            return
        try:
            # One attempt per claim: the store, not a sleeping task, holds the retry.
            result = await self.inner.attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            struck = None
            if is_integration_fault(exc) and isinstance(exc, DeliveryError):
                struck = self.pause.strike(row.event_id, exc)  # held again and again: failed
            if is_integration_fault(exc) and struck is None:
                await self._paused(row, exc)
            elif struck is not None:
                await self._failed(row, delivery, struck)
            else:
                await self._failed(row, delivery, exc)
            return
        outcome = getattr(result, "outcome", None)
        reason = getattr(result, "outcome_reason", None)
        await self.record(
            self.store.delivered, replace(row, outcome=outcome, outcome_reason=reason)
        )
        count = getattr(self.stats, "delivered", None)
        if callable(count):
            count(delivery, result)
        else:
            self.stats.sent += 1
        if self.pause.active:
            self.pause.end(await self._held())
        await notify(self.on_delivered, delivery, result)

    async def _held(self) -> int:
        try:
            return await self.store.unfinished()
        except Exception:
            return -1

    async def _paused(self, row: OutboxRow, exc: Exception) -> None:
        # Not the event's fault: it goes back as it was (this attempt not counted).
        await self.record(self.store.release, [row])
        if not self.pause.active:
            count = getattr(self.stats, "count", None)
            if callable(count):
                with contextlib.suppress(Exception):
                    count("paused", reason=getattr(exc, "code", None))
        self.pause.begin(exc, await self._held())

    async def _failed(self, row: OutboxRow, delivery: Delivery, exc: Exception) -> None:
        if not isinstance(exc, DeliveryError):
            # Our own validation errors are final; anything else may be a passing fault.
            retryable = not isinstance(exc, AttributionError)
            exc = DeliveryError(
                row.event_id, type(exc).__name__, str(exc) or "error", retryable=retryable
            )
        now = self.store.now()
        elapsed = max(0.0, now - (row.first_attempt_at or now))
        wait = next_retry(
            exc, self.inner.retry, attempts=row.attempts, elapsed=elapsed, stats=self.stats
        )
        row = replace(row, error_code=exc.code)
        if wait is not None:
            await self.record(self.store.retry_later, row, now + wait, str(exc))
            if wait < self.poll_interval:
                # Due before the next poll: look again then, not a whole poll interval later.
                self._loop.call_later(wait, self._wake.set)
            return
        self.stats.failed += 1
        logger.error("event %s is a dead letter: %s", row.event_id, describe(exc))  # id once
        await self.record(self.store.dead, row, str(exc))
        await notify(self.on_error, delivery, exc)

    async def record(self, method: Any, *args: Any) -> None:
        """Call a store method that records an outcome; a failure is logged, not raised.

        Tried twice (a pooled connection that died with a restarted server fails once): each
        of these calls only records if this worker still holds the claim, so a repeat is safe.
        """
        for attempt in (1, 2):
            try:
                await method(*args)
                return
            except Exception as exc:
                if attempt == 1:
                    await asyncio.sleep(0.05)
                    continue
                # The claim's lease runs out and another attempt follows: at-least-once.
                logger.warning(
                    "outbox %s: could not record an outcome: %s", self.store.description, exc
                )

    async def stop(self, grace: float) -> None:
        """Stop claiming; let attempts on the wire finish within ``grace``; release the rest."""
        # Not a plain cancel: a claim cancelled mid-way still commits in the store, and its
        # rows would wait for their lease to expire. The runner stops between claims.
        self.stopping = True
        self._wake.set()
        _, pending = await asyncio.wait([self._runner], timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(self._runner, return_exceptions=True)
        tasks = dict(self.tasks)
        if tasks:
            # Attempts already on the wire finish and record their outcome (each is one HTTP
            # attempt, bounded by its timeout): cancelled mid-flight, the next worker would
            # send them again.
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        unfinished = [row for task, row in tasks.items() if task.cancelled()]
        if unfinished:
            await self.record(self.store.release, unfinished)


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
        if delivery is not None and delivery.ended:
            # asyncio.run cancelled every task (a job ended without aclose): deliver afresh.
            transport.opened()
            await delivery.record(store.release, delivery.cut_short)
            delivery = transport.delivery
        if delivery is not None:
            await transport.flush(transport.shutdown_timeout)
            await delivery.stop(transport.timeout + 1.0)
            try:
                transport.left_in_store = await store.unfinished()
            except Exception:
                transport.left_in_store = -1
            if transport.left_in_store and store.lost:
                logger.error(
                    "%s events were left in the outbox file %s, which was deleted or replaced "
                    "while open: they are lost with this process (events stored after that "
                    "went to the fallback)",
                    "some" if transport.left_in_store < 0 else transport.left_in_store,
                    store.description,
                )
            elif await store.name_unconfirmed():
                pass  # a failing disk: the events left are named by id
            elif transport.left_in_store:
                logger.warning(
                    "%s events left in the outbox %s at shutdown; they are stored and will be "
                    "delivered by the next worker",
                    "some" if transport.left_in_store < 0 else transport.left_in_store,
                    store.description,
                )
        else:
            await store.name_unconfirmed()  # append-only: a failing disk names what it stored
        if transport.fallback is not None:
            await transport.fallback.aclose()
        await transport.sender.aclose()
    finally:
        transport.reset()
        await store.close()


class OutboxTransport(Transport):
    """Write every event to a durable outbox, and deliver from it in worker tasks.

    ``store`` is an :class:`OutboxStore`, a SQLite file path, or a ``redis://`` URL (built with
    ``append_timeout``, ``retention`` and ``allow_eviction`` where given). Each claimed event
    gets one attempt through ``inner`` (any :class:`Transport`); its ``retry`` policy decides
    when an event is tried again and when it becomes a dead letter. Without ``inner``, an
    :class:`HTTPTransport` is built from ``api_key``, ``base_url``, ``timeout`` and ``retry``.

    Options: ``deliver=False`` makes an append-only instance (web workers that leave delivery to
    ``asgi-attribution outbox deliver --follow``); ``concurrency`` attempts at once; ``lease``
    seconds a claim is held before another worker may take it over (must exceed one attempt,
    ``inner.timeout``); ``poll_interval`` seconds between looks for due events when idle;
    ``shutdown_timeout`` seconds ``aclose`` spends delivering; ``append_timeout`` (2 s) bounds
    every store call of ``send``; ``fallback`` (``"memory"``, a :class:`Transport`, or None to
    raise) takes the events the store cannot; ``pause_interval`` (30 s) between probes while an
    integration fault pauses delivery; ``retry_open=False`` makes ``start`` raise the store's
    :class:`OutboxError` instead of opening it again in the background (a CLI worker that should
    exit); ``on_error(delivery, exc)`` for each dead letter;
    ``on_delivered(delivery, result)`` for each event the provider answered 2xx (read
    ``result.outcome``).

    The fallback is a :class:`BackgroundTransport` like any other: ``queue_size`` (10,000) and
    ``queue_full_timeout`` (1 s) bound it, ``concurrency`` and ``pause_interval`` apply, an
    event it drops (full past ``queue_full_timeout``, or undelivered at shutdown) goes to
    ``on_drop(delivery, reason)``, and ``on_error``/``on_delivered`` are called for its events
    as for the store's. With ``fallback=None`` there is no queue: ``queue_size``,
    ``queue_full_timeout`` and ``on_drop`` raise ``TypeError``.

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
        append_timeout: float = 2.0,
        fallback: Literal["memory"] | Transport | None = "memory",
        pause_interval: float = 30.0,
        maintenance_interval: float = 60.0,
        retention: float | None = None,
        allow_eviction: bool | None = None,
        retry_open: bool = True,
        on_error: ErrorCallback | None = None,
        on_delivered: DeliveredCallback | None = None,
        on_drop: DropCallback | None = None,
        queue_size: int | None = None,
        queue_full_timeout: float | None = None,
        stats: DeliveryStats | None = None,
        providers: Iterable[Provider] = (),
    ) -> None:
        concurrency = 10 if concurrency is None else concurrency
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        for name, value in (
            ("lease", lease),
            ("poll_interval", poll_interval),
            ("append_timeout", append_timeout),
            ("pause_interval", pause_interval),
            ("maintenance_interval", maintenance_interval),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if not (fallback is None or fallback == "memory" or isinstance(fallback, Transport)):
            raise ValueError(f"fallback must be 'memory', a Transport or None, got {fallback!r}")
        options = (
            ("queue_size", queue_size),
            ("queue_full_timeout", queue_full_timeout),
            ("on_drop", on_drop),
        )
        queue: dict[str, Any] = {name: value for name, value in options if value is not None}
        if fallback is None and queue:
            raise TypeError(
                f"OutboxTransport(fallback=None) ignores {next(iter(queue))}=: there is no"
                " in-memory queue (a store failure raises outbox_write_failed)"
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
        self.store = open_store(
            store,
            append_timeout=append_timeout,
            retention=retention,
            allow_eviction=allow_eviction,
        )
        if stats is not None:
            self.stats = stats
        if inner is None:
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
        self.retry, self.timeout = inner.retry, inner.timeout
        self.deliver = deliver
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.shutdown_timeout = shutdown_timeout
        self.append_timeout = append_timeout
        self.pause_interval = pause_interval
        self.maintenance_interval = maintenance_interval
        self.retry_open = retry_open
        self.on_error = on_error
        self.on_delivered = on_delivered
        #: Events left undelivered in the store by the last ``aclose`` (safe, not lost).
        self.left_in_store = 0
        #: The in-memory queue for events the store cannot take (None: ``send`` raises).
        self.fallback: MemoryFallback | None = None
        if fallback is not None:
            target = inner if fallback == "memory" else fallback
            assert isinstance(target, Transport)
            self.fallback = MemoryFallback(
                self.store.description,
                target,
                self.stats,
                shutdown_timeout=shutdown_timeout,
                concurrency=concurrency,
                pause_interval=pause_interval,
                on_error=on_error,
                on_delivered=on_delivered,
                **queue,
            )
        #: The transport that sends (the inner one, also for an append-only instance's fallback).
        self.sender = inner
        self._providers = {p.name: p for p in (DUB, PIMMS, *providers)}
        # Loop state is created in start(), never at construction, import or fork.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = False
        self._opener: asyncio.Task[None] | None = None
        self.delivery: DeliveryLoop | None = None

    def __repr__(self) -> str:
        return f"OutboxTransport({self.store.description!r}, deliver={self.deliver})"

    @property
    def is_open(self) -> bool:
        """True once the store opened in this event loop (False while it is retried)."""
        return self._open

    async def start(self) -> None:
        """Open the store and, unless append-only, start delivering; idempotent.

        Never raises for a store failure: it is logged at ERROR, the store is opened again in
        the background (1 s, 2 s, ... up to 30 s apart) and events go to the fallback meanwhile.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and self._loop.is_running():
            raise RuntimeError(
                "OutboxTransport belongs to the event loop it started in, which still runs: "
                "hand events to it through a Tracker (which owns that loop), not directly"
            )
        # A new event loop without a clean shutdown: the old loop's claims come back when their
        # lease expires; nothing was only in the store's memory.
        self._loop, self._open, self.delivery, self._opener = loop, False, None, None
        await self.sender.start()
        try:
            await asyncio.wait_for(self.store.open(), max(10.0, self.append_timeout))
        except Exception as exc:
            if not self.retry_open:
                self._loop = None
                raise
            logger.error(
                "outbox %s unavailable at startup: %s; retrying in the background, events go "
                "to %s meanwhile",
                self.store.description,
                exc,
                "the in-memory queue" if self.fallback else "nowhere (fallback=None: they fail)",
            )
            self._opener = loop.create_task(keep_opening(self), name="asgi-attribution-open")
        else:
            self.opened()

    def opened(self) -> None:
        """The store is open: start delivering (unless append-only)."""
        self._open = True
        if self.inner is not None:
            pause = pause_for(self.store.description, self.pause_interval)
            self.delivery = DeliveryLoop(
                self.store,
                self.inner,
                self.stats,
                self._provider,
                pause,
                concurrency=self.concurrency,
                lease=self.lease,
                poll_interval=self.poll_interval,
                maintenance_interval=self.maintenance_interval,
                on_error=self.on_error,
                on_delivered=self.on_delivered,
            )

    def _provider(self, name: str) -> Provider:
        return self._providers.get(name) or get_provider(name)

    async def send(self, delivery: Delivery) -> TrackResult:
        """Write the event to the store, then return ``queued`` (``durable`` as the store says).

        Bounded by ``append_timeout``. If the store cannot take the event, it goes to the
        fallback (``durable=False``) or, with ``fallback=None``, :class:`DeliveryError`
        (``code="outbox_write_failed"``, retryable) is raised. A lead with ``mode="wait"`` is
        stored too: the handler never waits on the provider.
        """
        if self._loop is not asyncio.get_running_loop():
            await self.start()
        self._providers.setdefault(delivery.provider.name, delivery.provider)
        event_id = delivery.event.event_id
        fallback = self.fallback
        if not self._open:
            cause = "the store is not open (retrying in the background)"
        elif fallback is not None and not fallback.should_try_store():
            # Not tried: the next probe stays due (a signup every 0.5 s must not push it off
            # forever, which kept a recovered store "unavailable until shutdown").
            return await fallback.send(delivery)
        else:
            try:
                row = OutboxRow.from_delivery(delivery, now=self.store.now())
                bound = self.append_timeout + 0.25
                store_bound = self.store.append_bound
                if store_bound is not None and store_bound <= bound:
                    await self.store.append(row)  # bounded by the store (no task per signup)
                else:
                    await asyncio.wait_for(self.store.append(row), bound)
            except AppendUnconfirmed as exc:
                # The write left and may yet land: one copy only, whichever the store says.
                cause = f"{exc}; it may still be stored and delivered"
                if fallback is not None:
                    fallback.failed(cause)
                    return fallback.hold(delivery, exc.stored)
            except Exception as exc:
                cause = str(exc) or f"no answer within {self.append_timeout:g}s"
                if isinstance(exc, asyncio.TimeoutError):
                    cause = f"no answer within append_timeout ({self.append_timeout:g}s)"
            else:
                if fallback is not None:
                    fallback.recovered()
                self.stats.queued += 1
                if self.delivery is not None:
                    self.delivery.wake()
                return TrackResult("queued", delivery.event, durable=self.store.durable)
        error = DeliveryError(event_id, "outbox_write_failed", cause, retryable=True)
        if fallback is None:
            logger.error("event %s not stored in %s: %s", event_id, self.store.description, cause)
            raise error
        fallback.failed(cause)
        return await fallback.send(delivery)

    # -- flush and shutdown ------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until no event is pending or in flight in the store (or ``timeout`` passes).

        Events scheduled for a later retry count as pending. An append-only instance returns
        at once: its events are already safe. Events in the fallback queue are flushed too.
        """
        if self._loop is not asyncio.get_running_loop():
            return
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self.fallback is not None:
            await self.fallback.flush(timeout)
        if self.inner is None or self.delivery is None:
            return
        while True:
            try:
                left = await self.store.unfinished()
            except Exception as exc:
                logger.warning("outbox %s: %s", self.store.description, exc)
                left = -1
            if left == 0:
                return
            if self.delivery.pause.active:
                logger.warning(
                    "outbox %s: delivery is paused (%s); %s events wait in the store",
                    self.store.description,
                    self.delivery.pause.describe(),
                    "some" if left < 0 else left,
                )
                return
            if deadline is not None and loop.time() >= deadline:
                logger.warning(
                    "flush timed out after %gs with %s events left in the outbox %s",
                    timeout,
                    "some" if left < 0 else left,
                    self.store.description,
                )
                return
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        """Deliver within ``shutdown_timeout``, give back unfinished claims, close the store.

        What is left stays in the store and is logged (``left_in_store``); it is not lost,
        unless the store itself was lost (a deleted SQLite file): that is logged at ERROR.
        """
        if self._loop is None:
            return
        opener, self._opener = self._opener, None
        if opener is not None:
            opener.cancel()
            with contextlib.suppress(BaseException):
                await opener
        await close_transport(self)

    def as_returned(self, result: TrackResult, *, started: bool) -> TrackResult:
        """``queued`` and durable, as :meth:`send` answers once the store has the event.

        Example:
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> outbox = OutboxTransport("events.db")
            >>> outbox.as_returned(TrackResult("sent", lead), started=False).durable
            True
        """
        return replace(result, status="queued", durable=True, status_code=None, response=None)

    def check_within(self) -> None:
        """Pass when the store can join the caller's database transaction (PostgreSQL).

        Example:
            >>> OutboxTransport("postgresql://localhost/app").check_within()
        """
        self.store.check_within()

    async def append_within(self, delivery: Delivery, connection: object) -> TrackResult:
        """Insert the event on the caller's connection: their commit stores it.

        Not counted as queued: a rollback would leave it counted and never finished.
        """
        return await append_within(self.store, delivery, connection)

    @property
    def paused(self) -> str | None:
        """The cause while delivery is paused on an integration fault (None when delivering).

        A ``deliver`` loop that waits for the store to empty should stop and report it: the
        events stay pending until the cause (a revoked key, a wrong ``base_url``) is fixed.

        Example:
            >>> OutboxTransport("events.db").paused is None
            True
        """
        pause = pause_for(self.store.description, self.pause_interval)
        return pause.describe() if pause.active else None

    def in_running_loop(self) -> bool:
        """True when called from the event loop this transport was started in."""
        try:
            return self._loop is asyncio.get_running_loop()
        except RuntimeError:
            return False

    def reset(self) -> None:
        """Forget the event loop's state (after ``aclose``)."""
        self._loop, self._open, self.delivery = None, False, None

    def describe_state(self) -> dict[str, Any]:
        """A small dict for logs and tests: open, paused, in fallback, events in memory.

        Example:
            >>> OutboxTransport("events.db").describe_state()["open"]
            False
        """
        pause = pause_for(self.store.description, self.pause_interval)
        return {
            "open": self._open,
            "paused": pause.active,
            "fallback_outage": bool(self.fallback and self.fallback.in_outage),
            "in_memory_total": self.fallback.total if self.fallback else 0,
        }
