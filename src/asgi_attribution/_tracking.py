"""The per-request helpers: ``track_lead(request, ...)`` and friends, and ``@tracks_lead``.

Each reads the click id the middleware found and the middleware's tracker (both under the
request's scope keys, see :mod:`asgi_attribution._context`), then calls the tracker.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response
from typing_extensions import Unpack

from ._attribution import Attribution, attribution_in
from ._context import RequestLike, middleware_hint, scope_of, services_of
from ._events import CustomerFields, LeadFields, LeadOptions, SaleFields
from ._exceptions import InvalidEventError
from ._limits import METADATA_MAX_LENGTH, json_js_length
from ._tracker import Tracker, Tracking

__all__ = ["request_metadata", "track_customer", "track_lead", "track_sale", "tracks_lead"]


logger = logging.getLogger("asgi_attribution")

F = TypeVar("F", bound=Callable[..., Any])


def _context(request: RequestLike | None) -> tuple[Attribution, Tracker]:
    scope = scope_of(request)
    if scope is None:
        raise RuntimeError(
            "no request being handled: pass the request, or call tracker.track_* directly"
        )
    attribution = attribution_in(scope)
    services = services_of(scope)
    tracker = None if services is None else services.tracker
    if not isinstance(tracker, Tracker):
        raise RuntimeError("no tracker on this request: " + middleware_hint(scope))
    return attribution, tracker


def request_metadata(tracker: Tracker, attribution: Attribution | None, fields: Any) -> Any:
    """``fields`` with what the tracker adds to the metadata of an event tracked from a request.

    ``verified_metadata_key``: the request's ``Attribution.verified``. ``touchpoints_metadata_key``:
    its first and last touch, under the caller's own keys (a key the caller set is kept) and
    within the provider's metadata limit: what would break it is left out with a WARNING (the
    last touch alone is tried before none).

    Example:
        >>> tracker = Tracker("dub", verified_metadata_key="verified")
        >>> request_metadata(tracker, Attribution(DUB), {"metadata": {"plan": "pro"}})
        {'metadata': {'plan': 'pro', 'verified': False}}
    """
    if attribution is None:
        return fields
    key = tracker.verified_metadata_key
    if key is not None:
        fields["metadata"] = {**(fields.get("metadata") or {}), key: attribution.verified}
    key = tracker.touchpoints_metadata_key
    if key is None:
        return fields
    given = fields.get("metadata") or {}
    touches = attribution.touchpoints.as_metadata() if key not in given else None
    if touches is None:
        return fields
    for value in (touches, {"last": touches["last"]}):
        merged = {**given, key: value}
        try:
            fits = json_js_length(merged) <= METADATA_MAX_LENGTH
        except ValueError:
            return fields  # the caller's metadata is not JSON: the event's check names it
        if fits:
            if value is not touches:
                logger.warning(
                    "first touch left out of metadata[%r]: it would break the provider's "
                    "%d-character metadata limit",
                    key,
                    METADATA_MAX_LENGTH,
                )
            fields["metadata"] = merged
            return fields
    logger.warning(
        "touchpoints left out of metadata[%r]: they would break the provider's %d-character "
        "metadata limit",
        key,
        METADATA_MAX_LENGTH,
    )
    return fields


def track_lead(
    request: RequestLike | None, event_name: str, **fields: Unpack[LeadFields]
) -> Tracking:
    """Track a lead for the click behind ``request``; skipped (not an error) if there is none.

    ``request`` is the framework's request (anything with an ASGI ``.scope``), a raw ASGI
    scope, a WSGI environ (or a Flask or Django request) served through
    :mod:`asgi_attribution.wsgi`, or ``None`` for the request being handled. The fields are
    the tracker's (:meth:`Tracker.track_lead`). The event is validated at the call; awaiting
    sends it, and a call that is never awaited is reported by event id in an ERROR.

    Example:
        >>> async def signup(request):
        ...     user = ...  # create the account
        ...     await track_lead(request, "Sign up", customer_external_id="user_42",
        ...                      customer_email="ada@example.com")
    """
    attribution, tracker = _context(request)
    fields = request_metadata(tracker, attribution, dict(fields))
    return tracker.track_lead(click_id=attribution.click_id, event_name=event_name, **fields)


def track_sale(request: RequestLike | None, **fields: Unpack[SaleFields]) -> Tracking:
    """Track a sale, with the request's click id when present (direct sale tracking).

    Example:
        >>> async def checkout_done(request):
        ...     await track_sale(request, customer_external_id="user_42", amount=4900,
        ...                      invoice_id="in_123")
    """
    attribution, tracker = _context(request)
    fields = request_metadata(tracker, attribution, dict(fields))
    return tracker.track_sale(click_id=attribution.click_id, **fields)


def track_customer(request: RequestLike | None, **fields: Unpack[CustomerFields]) -> Tracking:
    """Update the customer's details with the request's tracker.

    Example:
        >>> async def profile(request):
        ...     await track_customer(request, customer_id="user_42", customer_name="Ada")
    """
    _, tracker = _context(request)
    return tracker.track_customer(**fields)


CustomerSpec = str | Mapping[str, Any] | None


def _customer_fields(spec: CustomerSpec) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return {"customer_external_id": spec}
    if not isinstance(spec, Mapping):
        raise InvalidEventError(
            "lead", [("customer", "the customer callable must return a str, a mapping or None")]
        )
    aliases = {"external_id": "customer_external_id", "id": "customer_external_id"}
    short = {"name", "email", "avatar"}
    fields: dict[str, Any] = {}
    for key, value in spec.items():
        key = aliases.get(key, f"customer_{key}" if key in short else key)
        fields[key] = value
    return fields


def tracks_lead(
    event_name: str,
    *,
    customer: Callable[[Any, dict[str, Any]], CustomerSpec],
    **options: Unpack[LeadOptions],
) -> Callable[[F], F]:
    """Decorate a signup endpoint to track a lead after it returns successfully.

    ``customer(result, arguments)`` receives the handler's return value and its arguments (by
    name) and returns the customer's external id, a mapping (``external_id``, ``name``,
    ``email``, ``avatar``, or the ``customer_*`` names), or ``None`` to track nothing. Other
    keyword ``options`` (``event_quantity``, ``mode``, ``metadata``) go to :func:`track_lead`.

    A handler that raises, or returns a response with status >= 400, tracks nothing. A lead that
    cannot be built after a successful signup is logged as an error rather than failing the
    response, so the visitor's account is not left half-created from their point of view.

    Example:
        >>> @tracks_lead("Sign up", customer=lambda user, args: {"id": user["id"],
        ...                                                     "email": user["email"]})
        ... async def signup(request):
        ...     return {"id": "user_42", "email": "ada@example.com"}
    """

    def decorate(handler: F) -> F:
        signature = inspect.signature(handler)
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if is_async:
                result = await cast(Callable[..., Awaitable[Any]], handler)(*args, **kwargs)
            else:
                result = await run_in_threadpool(handler, *args, **kwargs)
            if isinstance(result, Response) and result.status_code >= 400:
                return result
            try:
                bound = signature.bind_partial(*args, **kwargs)
                fields = _customer_fields(customer(result, dict(bound.arguments)))
                if fields is not None:
                    arguments = bound.arguments.values()
                    request = next((a for a in arguments if isinstance(a, HTTPConnection)), None)
                    await track_lead(request, event_name, **fields, **options)
            except Exception:
                logger.exception("lead %r after %s not tracked", event_name, handler.__name__)
            return result

        return cast(F, wrapper)

    return decorate
