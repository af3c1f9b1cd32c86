"""Durable delivery: write each event to an outbox before ``track_lead`` returns, deliver from it.

Guarantees, in plain words:
- ``send`` returns ``durable=True`` only after the event is written to a store that can keep
  that promise (:attr:`OutboxStore.durable`), so a crash, a deploy or an OOM kill after that
  point cannot lose it. A store that cannot take the event within ``append_timeout`` never
  fails the signup: the event goes to the in-memory ``fallback`` (``durable=False``), or, with
  ``fallback=None``, ``send`` raises :class:`DeliveryError` ``code="outbox_write_failed"``.
- A store that cannot be opened at startup does not stop the app: the failure is logged at
  ERROR and the store is opened again in the background; events meanwhile go to the fallback.
- Workers claim due events with a lease, make one attempt per claim (``inner.attempt``), and
  then mark the event delivered (with the provider's outcome), schedule its next attempt, or
  keep it as a dead letter with its last error. Times are the store's clock, never the wall
  clock of the process. A fault of the whole integration (401, 403, a wrong path) pauses
  claiming instead of spending the events' budgets.
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
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import SecretStr

from ..._exceptions import DeliveryError
from ...providers import DUB, PIMMS, Provider, get_provider
from ..background import ErrorCallback
from ..base import Delivery, DeliveryStats, TrackResult, Transport
from ..http import HTTPTransport
from ..retry import RetryPolicy
from .fallback import MemoryFallback
from .loop import DeliveredCallback, DeliveryLoop
from .pause import pause_for
from .rows import OutboxRow
from .store import OutboxStore, open_store
from .transport_life import close_transport, keep_opening

__all__ = ["OutboxTransport"]

logger = logging.getLogger("asgi_attribution")


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
        append_timeout: float = 2.0,
        fallback: Literal["memory"] | Transport | None = "memory",
        pause_interval: float = 30.0,
        maintenance_interval: float = 60.0,
        retention: float | None = None,
        allow_eviction: bool | None = None,
        retry_open: bool = True,
        on_error: ErrorCallback | None = None,
        on_delivered: DeliveredCallback | None = None,
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
                self.store.description, target, self.stats, shutdown_timeout=shutdown_timeout
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
            cause = fallback.cause or "outage"
        else:
            try:
                row = OutboxRow.from_delivery(delivery, now=self.store.now())
                bound = self.append_timeout + 0.25
                store_bound = self.store.append_bound
                if store_bound is not None and store_bound <= bound:
                    await self.store.append(row)  # bounded by the store (no task per signup)
                else:
                    await asyncio.wait_for(self.store.append(row), bound)
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
                    self.delivery.pause.cause,
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
        return pause.cause if pause.active else None

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
