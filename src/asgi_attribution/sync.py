"""Tracking from sync code: Django sync views, FastAPI ``def`` endpoints, Celery/RQ tasks, scripts.

The same three calls as :mod:`asgi_attribution._tracking`, without ``await``::

    from asgi_attribution import sync

    def signup(request):  # a Django sync view, or a FastAPI ``def`` endpoint
        user = create_account(request)
        sync.track_lead(request, "Sign up", customer_external_id=str(user.pk))

Where the event goes:

- The tracker is started and its event loop (:attr:`Tracker.loop`) runs on another thread (the
  server's, under the middleware's lifespan): the call is handed to that loop thread-safely
  and waits for its answer (``asyncio.run_coroutine_threadsafe``). Same queue, same
  guarantees as ``await track_lead(...)``: ``status="queued"``, drained at shutdown.
- Nobody started the tracker (a job, a script, ``--lifespan off``): the event is delivered
  inline in a fresh event loop, within the tracker's ``inline_timeout`` (``status="sent"``).
  A tracker started on a loop that has since ended (never closed) is closed first, in that
  fresh loop, delivering what it still held, with one WARNING.

Called from a thread that runs an event loop (an ``async def`` view), it raises
``RuntimeError``: blocking there would stall the very loop that delivers; ``await`` the
async helpers instead.

``request`` is a Starlette/FastAPI request, a Django request served through
``AttributionMiddleware`` (its ASGI scope is ``request.scope``), a raw ASGI scope, a Flask or
Django request (or the WSGI environ) served through :mod:`asgi_attribution.wsgi`, or ``None``:
then the request being handled (when the thread was started with its context, as FastAPI's
threadpool does, or the WSGI middleware's own thread), or, in a job, an explicit ``tracker=``
and ``click_id=``.

Under a WSGI server the WSGI middleware starts the tracker's loop in a daemon thread of each
worker process (:func:`start_owner`), so these calls return ``status="queued"`` there too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable

from typing_extensions import Unpack

from ._attribution import Attribution, attribution_in
from ._context import RequestLike, middleware_hint, scope_of, services_of
from ._events import CustomerFields, LeadFields, SaleFields
from ._exceptions import DeliveryError
from ._tracker import Ticket, Tracker, Tracking, alive, inline_on_purpose, owner_ended
from ._tracking import request_metadata
from .transports._base import TrackResult

__all__ = ["RequestLike", "track_customer", "track_lead", "track_sale"]


logger = logging.getLogger("asgi_attribution")


def _resolve(
    request: RequestLike | None, tracker: Tracker | None
) -> tuple[Attribution | None, Tracker]:
    """The request's attribution (``None`` for a job) and the tracker to use."""
    scope = None if request is None and tracker is not None else scope_of(request)
    if scope is None:
        if tracker is None:
            raise RuntimeError(
                "no request being handled: pass the request, or tracker= (and click_id= for a "
                "lead) in a job or a script"
            )
        return None, tracker
    attribution = attribution_in(scope)
    services = services_of(scope)
    found = (None if services is None else services.tracker) if tracker is None else tracker
    if not isinstance(found, Tracker):
        raise RuntimeError("no tracker on this request: " + middleware_hint(scope))
    return attribution, found


def _run(
    tracker: Tracker,
    call: Callable[[], Tracking],
    name: str,
    timeout: float | None,
) -> TrackResult:
    """``call()`` (validated here, in the calling thread), delivered within ``timeout``.

    Handed to the tracker's loop when it runs elsewhere; delivered inline in a fresh loop when
    nobody owns a queue that would die with it; handed to an owner thread of the tracker's
    when delivery needs a started loop (an outbox) or a loop left started must be closed.
    Returns within ``timeout`` or raises :class:`DeliveryError` naming the event; never a
    ``CancelledError``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"asgi_attribution.sync.{name}() called in a thread that runs an event loop: it "
            f"would block the loop that delivers. Use `await asgi_attribution.{name}(...)` here"
        )
    wait = tracker.inline_timeout if timeout is None else timeout
    tracking = call()
    tickets = [Ticket()]  # one per offer to an owner: taken once it runs ``tracking``
    try:
        return _deliver(tracker, tracking, tickets, time.monotonic() + wait, wait)
    except (asyncio.CancelledError, concurrent.futures.CancelledError):
        raise DeliveryError(
            tracking.event_id or "(none)",
            "cancelled",
            "the delivery was cancelled (its event loop ended)",
            retryable=True,
        ) from None
    finally:
        if not any(ticket.taken for ticket in tickets):
            tracking.close()  # not run here or there: nothing left to report about it


def _deliver(
    tracker: Tracker, tracking: Tracking, tickets: list[Ticket], deadline: float, wait: float
) -> TrackResult:
    event_id = tracking.event_id or "(none)"
    while True:
        ticket = tickets[-1]
        owner = tracker.loop
        if owner is not None and alive(owner):
            handed = _hand_over(owner, tracking, ticket, deadline, wait)
            if handed is not None:
                return handed
            tickets.append(Ticket())  # the owner ended before taking it: look again
        elif tracker.started or tracker.needs_owner:
            start_owner(tracker)  # an outbox needs an owner; an ended one must be closed
        elif ticket.withdraw():
            return _inline(tracking, deadline, event_id)
        if time.monotonic() >= deadline:
            ticket.withdraw()
            raise DeliveryError(
                event_id,
                "handoff_timeout",
                f"no event loop took the event within {wait:g}s",
                retryable=True,
            )
        time.sleep(0.005)


def _hand_over(
    owner: asyncio.AbstractEventLoop,
    tracking: Tracking,
    ticket: Ticket,
    deadline: float,
    wait: float,
) -> TrackResult | None:
    """The owner's answer; ``None`` if the owner ended before taking the event."""
    answers: list[TrackResult] = []
    event_id = tracking.event_id or "(none)"

    async def take() -> None:
        if ticket.take():
            answers.append(await tracking)

    try:
        future = asyncio.run_coroutine_threadsafe(take(), owner)
    except RuntimeError:  # closed in the meantime
        return None
    # In slices: an owner that ends before taking the event leaves the future pending forever.
    while not future.done() and (ticket.taken or alive(owner)):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        concurrent.futures.wait([future], timeout=min(left, 0.05))
    if answers:
        return answers[0]
    if future.done() and not future.cancelled():
        error = future.exception()
        if isinstance(error, Exception):
            raise error  # the tracker's own answer: QueueFullError, DeliveryError, ...
    if ticket.withdraw():  # never taken: nothing was sent, the caller still holds it
        future.cancel()
        if not alive(owner):
            return None
        raise DeliveryError(
            event_id,
            "handoff_timeout",
            f"the tracker's event loop did not take the event within {wait:g}s (blocked?)",
            retryable=True,
        )
    if future.done():  # taken, then cut short by the owner loop's end: never sent twice
        raise owner_ended(event_id)
    raise DeliveryError(
        event_id,
        "handoff_timeout",
        f"the tracker's event loop took the event but gave no answer within {wait:g}s: it "
        "may still be queued there (not sent again)",
        retryable=False,
    )


def _inline(tracking: Tracking, deadline: float, event_id: str) -> TrackResult:
    """Deliver in a fresh event loop of this thread, within what is left of the timeout."""

    async def inline() -> TrackResult:
        inline_on_purpose.set(True)  # this task's own context: the documented job path
        try:
            return await asyncio.wait_for(tracking, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeliveryError(
                event_id, "inline_timeout", "not delivered within the call's timeout"
            ) from None

    return asyncio.run(inline())


_owners: weakref.WeakKeyDictionary[Tracker, threading.Thread] = weakref.WeakKeyDictionary()
_owners_lock = threading.Lock()


def start_owner(
    tracker: Tracker,
    *,
    start: bool = False,
    on_end: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start the tracker's owner thread (once per process): an event loop that owns delivery.

    For a tracker that needs a started loop (an outbox), or with ``start=True`` (the WSGI
    middleware: its background queue lives there), it starts the tracker and runs until
    ``aclose`` (or the exit, where the tracker's ``atexit`` last resort drains it). For a
    tracker left started on a loop that ended, it closes it (delivering what it held) and ends.
    Sync callers hand their events to it meanwhile, as to any owner. A daemon thread: it never
    keeps the process alive, and its drain runs at exit. ``on_end`` runs on its loop once the
    tracker is closed (the WSGI middleware releases its partner-click client there).

    Example:
        >>> from asgi_attribution import MemoryTransport, Tracker, sync
        >>> tracker = Tracker("dub", transport=MemoryTransport())
        >>> sync.start_owner(tracker, start=True)
        >>> tracker.started
        True
        >>> sync.track_customer(None, tracker=tracker, customer_id="u1").status
        'sent'
        >>> import asyncio
        >>> asyncio.run(tracker.aclose())
    """
    with _owners_lock:
        running = _owners.get(tracker)
        if running is not None and running.is_alive():
            return
        ready = threading.Event()

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            try:
                if start or tracker.needs_owner:
                    await tracker.start()
                else:
                    await tracker.flush(0)  # closes what the ended loop left (see Tracker)
            finally:
                ready.set()
            while tracker.loop is loop:
                await asyncio.sleep(0.1)
            if on_end is not None:
                await on_end()

        def main() -> None:
            try:
                asyncio.run(serve())
            except Exception:
                logger.exception("the %s tracker's owner thread failed", tracker.provider.name)
            finally:
                ready.set()

        thread = threading.Thread(target=main, name="asgi-attribution-owner", daemon=True)
        _owners[tracker] = thread
        thread.start()
    ready.wait(1.0)  # mostly instant; the caller's own deadline bounds the rest


def track_lead(
    request: RequestLike | None,
    event_name: str,
    *,
    tracker: Tracker | None = None,
    click_id: str | None = None,
    timeout: float | None = None,
    **fields: Unpack[LeadFields],
) -> TrackResult:
    """Track a lead from sync code: :func:`asgi_attribution.track_lead` without ``await``.

    The click id is the request's (or ``click_id=``, which wins; a job has no request);
    ``tracker=`` defaults to the middleware's. ``timeout`` bounds the wait for the tracker's
    loop to take the event (default: the tracker's ``inline_timeout``).

    Example:
        >>> from asgi_attribution import MemoryTransport, Tracker, sync
        >>> memory = MemoryTransport()
        >>> tracker = Tracker("dub", transport=memory)
        >>> result = sync.track_lead(None, "Sign up", tracker=tracker, click_id="clk_1",
        ...                     customer_external_id="user_42")
        >>> result.status, memory.events[0].customer_external_id
        ('sent', 'user_42')
    """
    attribution, tracker = _resolve(request, tracker)
    clicked = click_id if click_id is not None or attribution is None else attribution.click_id
    given = request_metadata(tracker, attribution, dict(fields))
    call = functools.partial(tracker.track_lead, click_id=clicked, event_name=event_name, **given)
    return _run(tracker, call, "track_lead", timeout)


def track_sale(
    request: RequestLike | None,
    *,
    tracker: Tracker | None = None,
    click_id: str | None = None,
    timeout: float | None = None,
    **fields: Unpack[SaleFields],
) -> TrackResult:
    """Track a sale from sync code (a webhook handler, a billing job); ``amount`` in cents.

    Example:
        >>> from asgi_attribution import MemoryTransport, Tracker, sync
        >>> tracker = Tracker("dub", transport=MemoryTransport())
        >>> sync.track_sale(None, tracker=tracker, customer_external_id="user_42", amount=4900,
        ...            invoice_id="in_1").status
        'sent'
    """
    attribution, tracker = _resolve(request, tracker)
    clicked = click_id if click_id is not None or attribution is None else attribution.click_id
    given = request_metadata(tracker, attribution, dict(fields))
    call = functools.partial(tracker.track_sale, click_id=clicked, **given)
    return _run(tracker, call, "track_sale", timeout)


def track_customer(
    request: RequestLike | None,
    *,
    tracker: Tracker | None = None,
    timeout: float | None = None,
    **fields: Unpack[CustomerFields],
) -> TrackResult:
    """Update a customer's details from sync code.

    Example:
        >>> from asgi_attribution import MemoryTransport, Tracker, sync
        >>> tracker = Tracker("dub", transport=MemoryTransport())
        >>> sync.track_customer(None, tracker=tracker, customer_id="user_42",
        ...                customer_name="Ada").status
        'sent'
    """
    _, tracker = _resolve(request, tracker)
    call = functools.partial(tracker.track_customer, **fields)
    return _run(tracker, call, "track_customer", timeout)
