"""The :class:`Tracker`: one per app, it knows the provider and how events reach it.

From the arguments of a ``track_*`` call to a result, in the order a call goes:

- **Building** (:func:`build_event`): the customer's external id is taken from any of its names;
  optional fields a visitor typed that break a limit are dropped with a warning instead of
  costing the lead; the provider's own limits are checked.
- **Calls that send nothing** (an organic lead, a sale the provider would not record) are
  answered at once, as a ready :class:`Tracking`.
- **The delivery** the options ask for is built once (``_delivery.build_stack``); the tracker
  talks to it through the :class:`~asgi_attribution.Transport` contract only.
- **Overrides** (:data:`transport_overrides`, behind ``capture_events``): while one is active,
  every tracker in the process hands its events to it (a plain list, not a ContextVar: a
  capture sees events from any task or thread, like Django's ``mail.outbox``).
- **The owner of the event loop**: the loop the tracker started in owns delivery. A call from
  another loop or thread is handed to it (:func:`on_owner`, a :class:`Ticket` so exactly one
  side does the work); not taken within ``handoff_timeout``, it is sent inline; if the owner
  loop ended without ``aclose``, the caller's loop closes the tracker (delivering what it
  held) and carries on. Work the owner took is never done twice: if its answer is lost, the
  caller gets a :class:`DeliveryError` naming the event.
- **The end of the owner loop**: one idle task on the loop sees a job end without ``aclose``
  (``asyncio.run`` cancels it) and drains the tracker within ``shutdown_timeout``, reporting
  the rest by id. A loop closed by hand is caught by an ``atexit`` last resort; a forked child
  forgets its parent's loop.
- **Tracking**: what a ``track_*`` call returns; collected without being awaited, it reports
  the event it would have sent (an ERROR naming its id): a forgotten ``await`` would lose the
  lead without a word.

One concept, the tracker's call from arguments to result: each part above is a step of it, and
none is used elsewhere. The loop's ownership stays here too: it decides where each call runs
and who drains what a call accepted; split off, the one owner of delivery is in two files.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import SecretStr
from typing_extensions import Unpack

from ._delivery import DELIVERY_OPTIONS, build_stack
from ._events import (
    VISITOR_FIELDS,
    CustomerFields,
    Event,
    LeadFields,
    SaleEvent,
    SaleFields,
    take_external_id,
    validate_event,
    validate_fields,
)
from ._exceptions import DeliveryError, InvalidEventError, MissingClickIdError
from ._options import flag, number
from ._providers import Provider, get_provider
from .transports import Delivery, OutboxStore, RetryPolicy, TrackResult, Transport
from .transports._background import DeliveredCallback, DropCallback, ErrorCallback

__all__ = [
    "Tracker",
    "Tracking",
    "TransportOverrides",
    "as_configured",
    "build_event",
    "ready",
    "transport_overrides",
    "unrecorded_sale",
]


logger = logging.getLogger("asgi_attribution")

# Set by `sync` while it sends inline as documented (a job): no "not started" WARNING then.
inline_on_purpose: ContextVar[bool] = ContextVar("asgi_attribution_inline", default=False)


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


class TransportOverrides:
    """A stack of transports that stand in for every tracker's own; the innermost wins.

    Example:
        >>> from asgi_attribution import MemoryTransport
        >>> memory = MemoryTransport()
        >>> with transport_overrides.use(memory):
        ...     transport_overrides.current is memory
        True
        >>> transport_overrides.current is None
        True
    """

    __slots__ = ("_stack",)

    def __init__(self) -> None:
        self._stack: list[Transport] = []

    @property
    def current(self) -> Transport | None:
        """The transport every tracker uses now, or ``None`` (each uses its own)."""
        return self._stack[-1] if self._stack else None

    @contextmanager
    def use(self, transport: Transport) -> Iterator[Transport]:
        """Route every tracker's events to ``transport`` inside the ``with`` block."""
        self._stack.append(transport)
        try:
            yield transport
        finally:
            self._stack.remove(transport)


#: The process-wide overrides that :class:`~asgi_attribution.Tracker` consults on each event.
transport_overrides = TransportOverrides()


def as_configured(result: TrackResult, transport: Transport, *, started: bool) -> TrackResult:
    """An override's ``result`` as a tracker with ``transport`` would have returned it.

    So code that branches on the result takes the same branch in tests as in production:
    ``queued`` (and ``durable`` with an outbox) where the tracker queues, ``sent`` inline.

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> queue = BackgroundTransport(MemoryTransport())
        >>> as_configured(TrackResult("sent", lead), queue, started=True).status
        'queued'
    """
    if result.status != "sent" or result.event is None:
        return result
    return transport.as_returned(result, started=started)


def build_event(
    provider: Provider, kind: str, fields: dict[str, Any], **more: Any
) -> tuple[Delivery, tuple[str, ...]]:
    """The validated event of ``kind``, checked against what ``provider`` takes, and the
    warnings of optional fields dropped on the way.

    ``fields`` are the call's keyword arguments (changed in place). Raises
    :class:`InvalidEventError` for a required field.

    Example:
        >>> delivery, warnings = build_event(DUB, "lead", {"customer_external_id": "u1",
        ...     "customer_name": "x" * 101}, click_id="c1", event_name="Sign up")
        >>> delivery.event.customer_name, warnings
        (None, ('customer_name: must be at most 100 characters (got 101)',))
        >>> delivery.request().json["customerExternalId"]
        'u1'
    """
    take_external_id(kind, fields)
    fields.update(more)
    warnings: tuple[str, ...] = ()
    try:
        event = validate_fields(kind, fields)
    except InvalidEventError as exc:
        # What a visitor typed (a long name, an IDN email) must not cost the lead: the event
        # goes without those fields. A required field still raises.
        if not exc.errors or not set(exc.fields) <= VISITOR_FIELDS:
            raise
        warnings = tuple(f"{name}: {reason}" for name, reason in exc.errors)
        for name in exc.fields:
            fields.pop(name, None)
        event = validate_fields(kind, fields)
        logger.warning(
            "%s %s sent without what broke a limit: %s",
            kind,
            event.event_id,
            "; ".join(warnings),
            extra={"event_id": event.event_id},
        )
    # What the provider refuses, refused before anything is queued. The request itself is
    # rendered by the first attempt: off the handler's path, and never for an outbox row.
    provider.check(event)
    return Delivery(event, provider), warnings


async def _result(result: TrackResult) -> TrackResult:
    return result


def ready(result: TrackResult, what: str) -> Tracking:
    """A :class:`Tracking` of ``what`` (``"track_lead"``...) that sent nothing: ``result``.

    Example:
        >>> import asyncio
        >>> asyncio.run(ready(TrackResult("skipped", reason="no click id"), "track_lead")).status
        'skipped'
    """
    return Tracking(_result(result), None, what)


def unrecorded_sale(
    provider: Provider, event: SaleEvent, warnings: tuple[str, ...]
) -> TrackResult | None:
    """The skipped result of a sale ``provider`` would answer 200 and not record, else None.

    Example:
        >>> unrecorded_sale(DUB, SaleEvent(customer_external_id="u", amount=0), ()).reason
        'amount 0: dub records no sale for it'
        >>> unrecorded_sale(DUB, SaleEvent(customer_external_id="u", amount=1), ()) is None
        True
    """
    if not provider.ignores_sale(event):
        return None
    logger.warning(
        "sale %s not recorded by %s: amount_zero (not sent)",
        event.event_id,
        provider.name,
        extra={"event_id": event.event_id, "outcome_reason": "amount_zero"},
    )
    return TrackResult(
        "skipped",
        event,
        reason=f"amount {event.amount}: {provider.name} records no sale for it",
        outcome="not_recorded",
        outcome_reason="amount_zero",
        warnings=warnings,
    )


T = TypeVar("T")


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


def owner_ended(event_id: str) -> DeliveryError:
    """The error of an event the owner loop took and ended before answering for.

    Example:
        >>> owner_ended("evt_1").code
        'owner_ended'
    """
    return DeliveryError(
        event_id,
        "owner_ended",
        "the event loop owning delivery took the event and ended before answering: it was "
        "handed to its drain (delivered or reported there), not sent again",
        retryable=False,
    )


#: Started trackers, for the last resort at interpreter exit (weak: a tracker is never kept).
_started: weakref.WeakSet[Tracker] = weakref.WeakSet()
_atexit_registered = False


def _close_at_exit() -> None:
    """Close every tracker still started: deliver or report, by id, what it holds."""
    for tracker in list(_started):
        owner = tracker.loop
        bound = tracker.shutdown_bound
        try:
            if alive(owner):
                assert owner is not None
                asyncio.run_coroutine_threadsafe(tracker.aclose(), owner).result(bound)
            elif tracker.started:
                asyncio.run(asyncio.wait_for(tracker.aclose(), bound))
        except BaseException as exc:  # exiting: log, carry on with the next
            logger.error("closing the %s tracker at exit failed: %r", tracker.provider.name, exc)


def _register_exit_drain() -> None:
    """Drain at exit before thread pools refuse work: at interpreter exit, ``threading`` calls
    its exit hooks (the one that shuts every ThreadPoolExecutor down, so a DNS lookup or a
    SQLite write in one raises) before ``atexit``'s. Its hooks run last registered first: the
    pools' hook is registered (by importing their module) before this one."""
    import concurrent.futures.thread  # noqa: F401  # registers the pools' exit hook now

    try:
        threading._register_atexit(_close_at_exit)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # another Python, or exiting already: atexit's
        atexit.register(_close_at_exit)


def _forget_parent_loops() -> None:  # in a forked child the parent's loop does not run
    for tracker in _started:
        tracker._loop, tracker._watch, tracker._started, tracker._closing = None, None, False, False
    _started.clear()


os.register_at_fork(after_in_child=_forget_parent_loops)  # pre-fork servers: gunicorn, uWSGI


async def run_on(owner: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the ``owner`` loop (another thread's) and await its result here.

    Example:
        >>> async def main():
        ...     return await run_on(asyncio.get_running_loop(), asyncio.sleep(0, "ok"))
        >>> asyncio.run(main())
        'ok'
    """
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, owner))


class Tracker:
    """Knows the provider and how events reach it; one per app.

    ``provider`` is ``"dub"``, ``"pimms"`` or a :class:`Provider`. ``api_key`` defaults to
    ``DUB_API_KEY`` / ``PIMMS_API_KEY`` and is never shown. Delivery, by the options given:

    - default: queued in memory and delivered in the background over HTTP with retries
      (:class:`BackgroundTransport`: ``queue_size``, ``queue_full_timeout``, ``on_drop``);
    - ``outbox=`` (a SQLite file path, a ``redis://`` URL or an :class:`OutboxStore`): stored
      durably before ``track_*`` returns and delivered from the store (:class:`OutboxTransport`;
      the queue options shape its in-memory fallback, for events the store cannot take);
      ``deliver=False`` only appends, for instances whose events a separate
      ``asgi-attribution outbox deliver --follow`` worker delivers;
    - ``background=False``: sent inline, returning the provider's answer;
    - ``transport=``: your own transport (for example :class:`MemoryTransport`), as is.

    Shared by the built deliveries: ``timeout`` (seconds per HTTP attempt, default 10),
    ``retry`` (:class:`RetryPolicy`), ``concurrency`` (requests at once, default 10),
    ``shutdown_timeout`` (seconds the drain may take, default 20) and ``on_error(delivery,
    exc)`` for final failures. ``rate_limit_share`` (default 0.8, in (0, 1]) is the fraction
    of the API key's rate limit delivery may use, as the provider's ``X-RateLimit-*``
    headers state it: the rest is left to the app's own calls with the key. An option the
    chosen delivery would ignore raises ``TypeError`` naming both. With
    ``require_click_id=True`` a lead without a click id raises instead of being skipped;
    ``verified_metadata_key`` adds the request's ``Attribution.verified`` flag to the
    metadata of events tracked from a request, and ``touchpoints_metadata_key`` (default
    ``"touchpoints"``; ``None``: never) its first and last touch
    (``AttributionMiddleware(touchpoints=True)``), within the provider's metadata limit.
    ``tracker.stats`` counts what happened.

    The loop the tracker starts in owns delivery (:attr:`loop`). A ``track_*`` call on another
    loop or thread is handed to it; one the owner does not take within ``handoff_timeout``
    seconds (default 5: the loop is blocked) is sent inline, bounded by ``inline_timeout``.

    Example:
        >>> tracker = Tracker("dub", api_key="dub_xxx")
        >>> Tracker("dub", transport=MemoryTransport(), retry=RetryPolicy())
        Traceback (most recent call last):
        ...
        TypeError: Tracker(transport=...) ignores retry=: configure the transport
    """

    def __init__(
        self,
        provider: str | Provider = "dub",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: Transport | None = None,
        outbox: str | os.PathLike[str] | OutboxStore | None = None,
        deliver: bool | None = None,
        background: bool | None = None,
        require_click_id: bool = False,
        verified_metadata_key: str | None = None,
        touchpoints_metadata_key: str | None = "touchpoints",
        inline_timeout: float = 10.0,
        handoff_timeout: float = 5.0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
        rate_limit_share: float | None = None,
        queue_size: int | None = None,
        queue_full_timeout: float | None = None,
        shutdown_timeout: float | None = None,
        on_error: ErrorCallback | None = None,
        on_drop: DropCallback | None = None,
        on_delivered: DeliveredCallback | None = None,
        pause_interval: float | None = None,
        outbox_fallback: Literal["memory"] | None = "memory",
        append_timeout: float | None = None,
        outbox_retention: float | None = None,
        allow_eviction: bool | None = None,
    ) -> None:
        given = {k: v for k, v in locals().items() if k in DELIVERY_OPTIONS and v is not None}
        if outbox_fallback == "memory":
            del given["outbox_fallback"]  # the default: not "given" to a delivery without outbox
        elif outbox_fallback is None:
            given["outbox_fallback"] = "none"
        self.provider = get_provider(provider)
        key = api_key if api_key is not None else os.environ.get(self.provider.api_key_env)
        self._api_key = SecretStr(key) if key else None
        self.base_url = base_url or self.provider.base_url
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"Tracker(base_url=...) must be an http:// or https:// URL with a host, "
                f"got {self.base_url!r}"
            )
        number("Tracker", "inline_timeout", inline_timeout, 0.001)
        number("Tracker", "handoff_timeout", handoff_timeout, 0.001)
        flag("Tracker", "require_click_id", require_click_id)
        flag("Tracker", "background", background, none=True)
        flag("Tracker", "deliver", deliver, none=True)
        if transport is not None and not isinstance(transport, Transport):
            raise TypeError(f"Tracker(transport=...) must be a Transport, got {transport!r}")
        stack = build_stack(self.provider, self._api_key, self.base_url, transport, given)
        self.transport = stack.transport
        self.stats = stack.stats
        self._http = stack.http
        self._new_http = stack.new_http
        self._memory_queue = stack.memory_queue
        self.inline_timeout = float(inline_timeout)
        self.handoff_timeout = float(handoff_timeout)
        self.require_click_id = require_click_id
        self.verified_metadata_key = verified_metadata_key
        self.touchpoints_metadata_key = touchpoints_metadata_key
        self._started = False
        self._closing = False
        self._watch: asyncio.Task[None] | None = None  # the idle task that sees the loop end
        self._warned_unowned = False
        self._warned_ended = False
        # The one owner of delivery: the loop the tracker started in. Every other loop or
        # thread hands its events to it; transports are used on it alone.
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        key = "'**********'" if self._api_key else "None"
        return (
            f"Tracker(provider={self.provider.name!r}, base_url={self.base_url!r}, "
            f"api_key={key}, transport={type(self.transport).__name__})"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivery (the middleware calls this at lifespan startup); idempotent.

        A tracker left started on a loop that ended is first closed (or taken over) here.
        """
        await self._adopt_if_ended()
        if self._started:
            return
        self._started = True
        self._own()
        if self._http is not None and self._api_key is None:
            logger.warning(
                "no %s API key: set %s or pass api_key=; events will fail to deliver",
                self.provider.name,
                self.provider.api_key_env,
            )
        await self.transport.start()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event accepted so far is delivered or reported (or ``timeout``)."""
        owner = self._foreign_owner()
        if owner is not None:
            return await run_on(owner, self.flush(timeout))
        await self._adopt_if_ended()
        await self.transport.flush(timeout)

    async def aclose(self) -> None:
        """Deliver what is pending, then release connections. The tracker can start again.

        Called from another loop or thread while the owner loop runs, it runs on the owner.
        """
        owner = self._foreign_owner()
        if owner is not None:
            return await run_on(owner, self.aclose())
        if not self._started or self._closing:
            return
        # Still "started" while draining: events tracked meanwhile (shutdown handlers, jobs)
        # must reach the closing transport, which sends them inline, not a fresh one.
        self._closing = True
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        try:
            await self.transport.aclose()
        finally:
            self._started = self._closing = False
            self._loop = None
            _started.discard(self)

    def _own(self) -> None:
        """The running loop owns delivery from now on; its end is watched."""
        global _atexit_registered
        loop = self._loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watch_loop_end(), name="asgi-attribution-owner")
        _started.add(self)
        if not _atexit_registered:
            _atexit_registered = True
            _register_exit_drain()

    async def _watch_loop_end(self) -> None:
        """Idle until cancelled; cancelled by the loop's end (not ``aclose``), drain here."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if asyncio.current_task() is not self._watch or self._closing:
                raise  # aclose cancelled it: nothing to do
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()  # our own waits below must not see the loop's cancellation
        # Let every task the loop's end cancelled take its cancellation first (the queue's
        # workers end; the drain starts fresh ones).
        await asyncio.sleep(0)
        logger.warning(
            "the event loop owning the %s tracker is ending without `await tracker.aclose()` "
            "(a job that returned, raised or was cancelled): delivering what it holds now, "
            "within shutdown_timeout; start and close it in the same loop (`async with "
            "tracker:`)",
            self.provider.name,
        )
        await self.aclose()

    @property
    def started(self) -> bool:
        """True from :meth:`start` until :meth:`aclose` (or the owner loop's end).

        Example:
            >>> Tracker("dub", transport=MemoryTransport()).started
            False
        """
        return self._started

    @property
    def needs_owner(self) -> bool:
        """True when delivery needs a started event loop: an outbox, or your own transport.

        False for the in-memory queue and ``background=False``: a tracker nobody started
        sends their events inline instead.

        Example:
            >>> Tracker("dub").needs_owner, Tracker("dub", transport=MemoryTransport()).needs_owner
            (False, True)
        """
        return not self._memory_queue and self.transport is not self._http

    @property
    def shutdown_bound(self) -> float:
        """Seconds a close may take: the transport's ``shutdown_timeout`` plus a margin.

        Example:
            >>> Tracker("dub", shutdown_timeout=5).shutdown_bound
            15.0
        """
        return float(getattr(self.transport, "shutdown_timeout", 20.0)) + 10.0

    @property
    def api_key(self) -> SecretStr | None:
        """The API key given (or read from the provider's environment variable), kept secret.

        Available with any delivery, ``transport=`` included.

        Example:
            >>> tracker = Tracker("dub", api_key="dub_xxx", transport=MemoryTransport())
            >>> tracker.api_key, tracker.api_key.get_secret_value()
            (SecretStr('**********'), 'dub_xxx')
        """
        return self._api_key

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that owns delivery while the tracker is started, else ``None``.

        Code on another thread (a sync view, a task queue worker) hands its events to it.

        Example:
            >>> Tracker("dub", transport=MemoryTransport()).loop is None
            True
        """
        return self._loop

    def _foreign_owner(self) -> asyncio.AbstractEventLoop | None:
        """The owner loop, if it runs and is not the running loop (the caller's), else None."""
        owner = self._loop
        if owner is not None and owner is not asyncio.get_running_loop() and alive(owner):
            return owner
        return None

    async def _adopt_if_ended(self) -> None:
        """The owner loop ended without ``aclose``: the running loop takes delivery over.

        An in-memory queue is closed here (what it held is delivered or reported now, not
        left to a loop that may end as the last one did), and the tracker carries on as one
        never started. Any other transport is started again on this loop (an outbox's rows
        wait in its store; its claims come back when their lease expires).
        """
        owner = self._loop
        if owner is None or owner is asyncio.get_running_loop() or alive(owner):
            return
        self._own()
        if not self._memory_queue:
            await self.transport.start()
            return
        if not self._warned_ended:
            self._warned_ended = True
            logger.warning(
                "the %s tracker was started on an event loop that has ended without "
                "`await tracker.aclose()`: its pending events are delivered now and it is "
                "closed; start and close it in the same loop (`async with tracker:`)",
                self.provider.name,
            )
        await self.aclose()

    async def __aenter__(self) -> Tracker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- tracking ----------------------------------------------------------------------------

    async def send(self, event: Event) -> TrackResult:
        """Hand a validated event to the transport (or to an active override).

        Example:
            >>> async def resend(tracker):
            ...     event = LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u")
            ...     return await tracker.send(event)
        """
        return await self._deliver(Delivery(event, self.provider))

    async def _deliver(self, delivery: Delivery) -> TrackResult:
        override = transport_overrides.current
        if override is not None:
            return self._as_configured(await override.send(delivery))
        if self.transport is self._http:  # background=False
            return await self._send_inline(delivery)
        owner = self._foreign_owner()
        if owner is not None:
            return await self._hand_over(owner, delivery)
        await self._adopt_if_ended()
        if not self._started:
            if self._memory_queue:
                # Nobody owns a background queue here (no lifespan, no `async with`): a queue
                # would die with this event loop, so the event goes out before we return.
                if not inline_on_purpose.get():
                    self._warn_unowned("each event is sent inline, before track_* returns")
                return await self._send_inline(delivery)
            self._warn_unowned("it was started on first use")
            await self.start()
        # The transport counts what it finishes (or queues) in the stats it shares with us.
        return await self.transport.send(delivery)

    def _as_configured(self, result: TrackResult) -> TrackResult:
        return as_configured(result, self.transport, started=self._started)

    def _warn_unowned(self, what: str) -> None:
        if not self._warned_unowned:
            self._warned_unowned = True
            logger.warning(
                "the %s tracker is not started (no lifespan, no `async with tracker`): %s. "
                "Start it with the app's lifespan, `async with tracker:`, or "
                "`await tracker.start()` ... `await tracker.aclose()`",
                self.provider.name,
                what,
            )

    async def _hand_over(self, owner: asyncio.AbstractEventLoop, delivery: Delivery) -> TrackResult:
        """Hand ``delivery`` to the owner loop; if it does not take it, deliver it here.

        Not taken within ``handoff_timeout`` while the owner runs (blocked): sent inline on
        the caller's loop. The owner ended first: this loop takes delivery over.
        """
        answers: list[TrackResult] = []  # filled on the owner: its answer, even if it ends

        async def accept() -> TrackResult:
            result = await self.transport.send(delivery)
            answers.append(result)
            return result

        taken, result = await on_owner(owner, accept, self.handoff_timeout)
        if result is not None or answers:
            return result if result is not None else answers[0]
        if taken:
            # The owner took it and ended before answering: it may be queued or stored there
            # (and delivered by the owner's drain). Sending it again could send it twice.
            raise owner_ended(delivery.event.event_id)
        if not alive(owner):
            return await self._deliver(delivery)  # the owner ended: adopted on this loop
        logger.warning(
            "event %s: the event loop owning delivery did not take it within %gs: sent inline",
            delivery.event.event_id,
            self.handoff_timeout,
        )
        return await self._send_inline(delivery)

    async def _send_inline(self, delivery: Delivery) -> TrackResult:
        """Deliver now, retrying within ``inline_timeout`` seconds in all; raise if not."""
        event_id = delivery.event.event_id
        fresh = None
        if self._new_http is not None:
            # Off the owner loop (or with no owner) nothing would close a shared client on
            # this loop, and its connections would outlive it: one transport per send then.
            owned = self._started and self._loop is asyncio.get_running_loop()
            sending: Transport = self._http if owned and self._http else self._new_http()
            fresh = None if sending is self._http else sending
            attempts = sending.send(delivery)
        else:
            # The user's transport: the contract's inline send, through its one attempt.
            attempts = Transport.send(self.transport, delivery)
        try:
            return await asyncio.wait_for(attempts, self.inline_timeout)
        except asyncio.TimeoutError:
            # Cancelled here, so finished here: the transport never saw an end to count.
            self.stats.count("failed", delivery, reason="inline_timeout")
            raise DeliveryError(
                event_id,
                "inline_timeout",
                f"not delivered within inline_timeout={self.inline_timeout:g}s",
                retryable=True,
            ) from None
        finally:
            if fresh is not None:
                await fresh.aclose()

    def _tracking(
        self, delivery: Delivery, warnings: tuple[str, ...], what: str, within: object | None
    ) -> Tracking:
        event = delivery.event
        if within is not None:
            if transport_overrides.current is None:
                try:
                    self.transport.check_within()
                except TypeError as exc:
                    raise TypeError(f"{what}(within=...): {exc}") from None
            return Tracking(self._send_within(delivery, warnings, within), event.event_id, what)
        if not warnings:
            return Tracking(self._deliver(delivery), event.event_id, what)
        return Tracking(self._send_noting(delivery, warnings), event.event_id, what)

    async def _send_noting(self, delivery: Delivery, warnings: tuple[str, ...]) -> TrackResult:
        result = await self._deliver(delivery)
        return dataclasses.replace(result, warnings=(*result.warnings, *warnings))

    async def _send_within(
        self, delivery: Delivery, warnings: tuple[str, ...], connection: object
    ) -> TrackResult:
        """Insert the event on the caller's connection: their commit stores it."""
        override = transport_overrides.current
        if override is not None:
            result = self._as_configured(await override.send(delivery))
        else:
            if not self._started:
                self._warn_unowned("it was started on first use")
                await self.start()
            result = await self.transport.append_within(delivery, connection)
        return dataclasses.replace(result, warnings=(*result.warnings, *warnings))

    def track_lead(
        self, *, click_id: str | None, event_name: str, **fields: Unpack[LeadFields]
    ) -> Tracking:
        """Track a lead (a signup) for ``click_id``; await the result.

        The event is validated at the call (``InvalidEventError`` names the field). With
        ``click_id=None`` (an organic visit) it is then skipped, unless the tracker has
        ``require_click_id=True``. ``click_id=""`` is sent as is (Dub's deferred flow).
        ``external_id`` and ``customer_id`` are accepted legacy names of
        ``customer_external_id``.

        Example:
            >>> async def on_signup(tracker, user):
            ...     await tracker.track_lead(click_id=user.click_id, event_name="Sign up",
            ...                              customer_external_id=str(user.id))
        """
        values: dict[str, Any] = fields  # type: ignore[assignment]  # **fields: a fresh dict
        within = values.pop("within", None)
        delivery, warnings = build_event(
            self.provider,
            "lead",
            values,
            click_id="" if click_id is None else click_id,
            event_name=event_name,
        )
        if click_id is None:
            if self.require_click_id:
                raise MissingClickIdError("lead")
            logger.debug("lead %r skipped: no click id (organic visit)", event_name)
            skipped = TrackResult(
                "skipped", delivery.event, reason="no click id (organic visit)", warnings=warnings
            )
            return ready(skipped, "track_lead")
        return self._tracking(delivery, warnings, "track_lead", within)

    def track_sale(self, *, click_id: str | None = None, **fields: Unpack[SaleFields]) -> Tracking:
        """Track a sale; ``amount`` is an integer in cents. ``click_id`` enables direct sales.

        Example:
            >>> async def on_paid(tracker, invoice):
            ...     await tracker.track_sale(customer_external_id=invoice.user_id,
            ...                              amount=invoice.cents, invoice_id=invoice.id)
        """
        values: dict[str, Any] = fields  # type: ignore[assignment]  # **fields: a fresh dict
        within = values.pop("within", None)
        delivery, warnings = build_event(self.provider, "sale", values, click_id=click_id)
        assert isinstance(delivery.event, SaleEvent)
        # The provider would answer 200 and record nothing: say so now, send nothing.
        if (skipped := unrecorded_sale(self.provider, delivery.event, warnings)) is not None:
            return ready(skipped, "track_sale")
        return self._tracking(delivery, warnings, "track_sale", within)

    def refund_sale(
        self, *, invoice_id: str, amount: int | None = None, currency: str | None = None
    ) -> Tracking:
        """Refund the partner commission of the sale ``invoice_id``: all, or ``amount`` cents.

        Delivered like any event (queued, or stored in the outbox). The result's ``outcome`` is
        ``"recorded"``, ``"duplicate"`` (refunded already) or ``"not_recorded"`` (reason
        ``"no_commission"``: none appeared within ``HTTPTransport.refund_window``). Dub only:
        PIMMS raises :class:`InvalidEventError`.

        Example:
            >>> async def on_refund(tracker, refund):
            ...     await tracker.refund_sale(invoice_id=refund.invoice_id, amount=refund.cents)
        """
        event = validate_event("refund", invoice_id=invoice_id, amount=amount, currency=currency)
        self.provider.check(event)  # PIMMS refuses it here, before anything is queued
        delivery = Delivery(event, self.provider)
        return self._tracking(delivery, (), "refund_sale", None)

    def track_customer(self, **fields: Unpack[CustomerFields]) -> Tracking:
        """Update a customer's name, email or avatar by their external id; await the result.

        Example:
            >>> async def on_profile_change(tracker, user):
            ...     await tracker.track_customer(customer_id=str(user.id), customer_name=user.name)
        """
        values: dict[str, Any] = fields  # type: ignore[assignment]  # **fields: a fresh dict
        within = values.pop("within", None)
        delivery, warnings = build_event(self.provider, "customer", values)
        return self._tracking(delivery, warnings, "track_customer", within)
