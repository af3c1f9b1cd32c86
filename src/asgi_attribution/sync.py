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
``AttributionMiddleware`` (its ASGI scope is ``request.scope``), a raw ASGI scope, or ``None``:
then the request being handled (when the thread was started with its context, as FastAPI's
threadpool does), or, in a job, an explicit ``tracker=`` and ``click_id=``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import Unpack

from ._attribution import Attribution, attribution_in
from ._context import MIDDLEWARE_HINT, TRACKER_KEY, RequestLike, scope_of
from ._events import CustomerFields, LeadFields, SaleFields
from ._exceptions import DeliveryError
from ._tracker import Tracker
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
    found = scope.get(TRACKER_KEY) if tracker is None else tracker
    if not isinstance(found, Tracker):
        raise RuntimeError("no tracker on this request: " + MIDDLEWARE_HINT)
    return attribution, found


def _with_verified(
    tracker: Tracker, attribution: Attribution | None, fields: dict[str, Any]
) -> dict[str, Any]:
    key = tracker.verified_metadata_key
    if key is not None and attribution is not None:
        fields["metadata"] = {**(fields.get("metadata") or {}), key: attribution.verified}
    return fields


def _run(
    tracker: Tracker,
    call: Callable[[], Coroutine[Any, Any, TrackResult]],
    name: str,
    timeout: float | None,
) -> TrackResult:
    """Run ``call()`` on the tracker's loop when it runs elsewhere, else in a fresh loop.

    The tracker answers which loop owns delivery (:attr:`Tracker.loop`); in a fresh loop, a
    tracker whose loop ended without ``aclose`` is closed there first (see ``Tracker``).
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
    loop = tracker.loop
    if loop is not None and loop.is_running():
        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            if not future.cancel():  # it finished meanwhile
                return future.result()
            raise DeliveryError(
                "(not built)",
                "handoff_timeout",
                f"the tracker's event loop did not take the event within {wait:g}s (blocked?)",
                retryable=True,
            ) from None

    async def inline() -> TrackResult:
        return await call()

    return asyncio.run(inline())


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
    given = _with_verified(tracker, attribution, dict(fields))
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
    given = _with_verified(tracker, attribution, dict(fields))
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
