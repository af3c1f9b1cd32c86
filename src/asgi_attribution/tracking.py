"""The tracker (app-wide: provider + transport) and the per-request helpers built on it.

``track_lead(request, ...)`` reads the click id the middleware found, builds a validated event and
hands it to the tracker, which hands it to its transport.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response

from .attribution import Attribution, current_attribution, get_attribution
from .events import DeliveryError, Event, InvalidEventError, MissingClickIdError, validate_event
from .providers import Provider, get_provider
from .transports.background import BackgroundTransport, DropCallback, ErrorCallback
from .transports.base import Delivery, DeliveryStats, TrackResult, Transport
from .transports.http import HTTPTransport, RetryPolicy
from .transports.memory import active_captures
from .transports.outbox import OutboxStore, OutboxTransport

__all__ = ["Tracker", "track_customer", "track_lead", "track_sale", "tracks_lead"]

logger = logging.getLogger("asgi_attribution")

F = TypeVar("F", bound=Callable[..., Any])


def _external_id(kind: str, **candidates: str | None) -> str | None:
    """Pick the customer's external id from its current or legacy names; they must agree."""
    given = {name: value for name, value in candidates.items() if value is not None}
    if len(set(given.values())) > 1:
        names = " and ".join(given)
        raise InvalidEventError(kind, [(names, "give the customer's external id once")])
    return next(iter(given.values()), None)


class Tracker:
    """Knows the provider and how events reach it; one per app.

    ``provider`` is ``"dub"``, ``"pimms"`` or a :class:`Provider`. ``api_key`` defaults to
    ``DUB_API_KEY`` / ``PIMMS_API_KEY`` and is never shown. By default events are queued and
    delivered in the background over HTTP with retries (see :class:`BackgroundTransport` for
    ``queue_size``, ``queue_full_timeout``, ``shutdown_timeout``, ``on_error`` and ``on_drop``;
    :class:`RetryPolicy` for ``retry``); ``concurrency`` bounds simultaneous HTTP requests
    (workers and keep-alive connections) and ``timeout`` is per HTTP attempt;
    ``background=False`` sends inline and returns the provider's answer. ``transport`` replaces
    all of that (for example :class:`MemoryTransport` in tests). With ``require_click_id=True``
    a lead without a click id raises instead of being skipped. ``verified_metadata_key`` adds
    the request's ``Attribution.verified`` flag to the metadata of events tracked from a request.
    ``tracker.stats`` counts queued, sent, retried, failed and dropped events.
    ``outbox`` (a SQLite file path, a ``redis://`` URL or an :class:`OutboxStore`) makes delivery
    durable: each event is stored before ``track_*`` returns and delivered from the store (see
    :class:`OutboxTransport`); ``deliver=False`` only appends, for app instances whose events a
    separate ``asgi-attribution outbox deliver --follow`` worker delivers.

    Example:
        >>> tracker = Tracker("dub", api_key="dub_xxx")
        >>> async def nightly_job():
        ...     async with tracker:
        ...         await tracker.track_lead(click_id="cm3abc", event_name="Sign up",
        ...                                  customer_external_id="user_42")
    """

    def __init__(
        self,
        provider: str | Provider = "dub",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        transport: Transport | None = None,
        background: bool = True,
        require_click_id: bool = False,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        queue_size: int = 10_000,
        concurrency: int = 10,
        queue_full_timeout: float = 1.0,
        shutdown_timeout: float = 20.0,
        on_error: ErrorCallback | None = None,
        on_drop: DropCallback | None = None,
        verified_metadata_key: str | None = None,
        outbox: str | os.PathLike[str] | OutboxStore | None = None,
        deliver: bool = True,
    ) -> None:
        self.provider = get_provider(provider)
        key = api_key if api_key is not None else os.environ.get(self.provider.api_key_env)
        self._api_key = SecretStr(key) if key else None
        self.base_url = base_url or self.provider.base_url
        if transport is None and outbox is not None:
            # Durable: stored before track_* returns, delivered from the store (or, with
            # deliver=False, by a separate `asgi-attribution outbox deliver --follow`).
            self.stats = DeliveryStats()
            transport = OutboxTransport(
                outbox,
                deliver=deliver,
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=timeout,
                retry=retry,
                concurrency=concurrency,
                shutdown_timeout=shutdown_timeout,
                on_error=on_error,
                stats=self.stats,
                providers=[self.provider],
            )
        elif transport is None:
            self.stats = DeliveryStats()
            transport = HTTPTransport(
                self._api_key,
                base_url=self.base_url,
                timeout=timeout,
                retry=retry,
                max_connections=concurrency,
                stats=self.stats,
            )
            if background:
                transport = BackgroundTransport(
                    transport,
                    queue_size=queue_size,
                    workers=concurrency,
                    queue_full_timeout=queue_full_timeout,
                    shutdown_timeout=shutdown_timeout,
                    on_error=on_error,
                    on_drop=on_drop,
                    stats=self.stats,
                )
        else:
            own = getattr(transport, "stats", None)
            self.stats = own if isinstance(own, DeliveryStats) else DeliveryStats()
        self.transport = transport
        self.require_click_id = require_click_id
        self.verified_metadata_key = verified_metadata_key
        self._started = False
        self._closing = False

    def __repr__(self) -> str:
        key = "'**********'" if self._api_key else "None"
        return (
            f"Tracker(provider={self.provider.name!r}, base_url={self.base_url!r}, "
            f"api_key={key}, transport={type(self.transport).__name__})"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivery (the middleware calls this at lifespan startup); idempotent."""
        if self._started:
            return
        self._started = True
        http = getattr(self.transport, "inner", self.transport)
        if isinstance(http, HTTPTransport) and http.api_key is None and self._api_key is None:
            logger.warning(
                "no %s API key: set %s or pass api_key=; events will fail to deliver",
                self.provider.name,
                self.provider.api_key_env,
            )
        await self.transport.start()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event accepted so far is delivered or reported (or ``timeout``)."""
        await self.transport.flush(timeout)

    async def aclose(self) -> None:
        """Deliver what is pending, then release connections. The tracker can start again."""
        if not self._started or self._closing:
            return
        # Still "started" while draining: events tracked meanwhile (shutdown handlers, jobs)
        # must reach the closing transport, which sends them inline, not a fresh one.
        self._closing = True
        try:
            await self.transport.aclose()
        finally:
            self._started = self._closing = False

    async def __aenter__(self) -> Tracker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- tracking ----------------------------------------------------------------------------

    async def send(self, event: Event) -> TrackResult:
        """Hand a validated event to the transport (or to an active :func:`capture_events`).

        Example:
            >>> from asgi_attribution import LeadEvent
            >>> async def resend(tracker):
            ...     event = LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u")
            ...     return await tracker.send(event)
        """
        delivery = Delivery(event, self.provider)
        if active_captures:
            return await active_captures[-1].send(delivery)
        if not self._started:
            await self.start()
        transport = self.transport
        if transport.counts_outcomes:
            return await transport.send(delivery)
        try:
            result = await transport.send(delivery)
        except DeliveryError:
            self.stats.failed += 1
            raise
        if result.status == "sent":
            self.stats.sent += 1
        elif result.status == "queued":
            self.stats.queued += 1
        return result

    async def track_lead(
        self,
        *,
        click_id: str | None,
        event_name: str,
        customer_external_id: str | None = None,
        customer_name: str | None = None,
        customer_email: str | None = None,
        customer_avatar: str | None = None,
        event_quantity: int | None = None,
        mode: str | None = None,
        metadata: dict[str, Any] | None = None,
        external_id: str | None = None,
        customer_id: str | None = None,
    ) -> TrackResult:
        """Track a lead (a signup) for ``click_id``.

        ``click_id=None`` (an organic visit) is skipped, after validation, unless the tracker
        has ``require_click_id=True``. ``click_id=""`` is sent as is (Dub's deferred flow).
        ``external_id`` and ``customer_id`` are accepted legacy names of
        ``customer_external_id``.

        Example:
            >>> async def on_signup(tracker, user):
            ...     await tracker.track_lead(click_id=user.click_id, event_name="Sign up",
            ...                              customer_external_id=str(user.id))
        """
        external = _external_id(
            "lead",
            customer_external_id=customer_external_id,
            external_id=external_id,
            customer_id=customer_id,
        )
        event = validate_event(
            "lead",
            click_id="" if click_id is None else click_id,
            event_name=event_name,
            customer_external_id=external,
            customer_name=customer_name,
            customer_email=customer_email,
            customer_avatar=customer_avatar,
            event_quantity=event_quantity,
            mode=mode,
            metadata=metadata,
        )
        self.provider.render(event)  # provider-specific limits, before anything is queued
        if click_id is None:
            if self.require_click_id:
                raise MissingClickIdError("lead")
            logger.debug("lead %r skipped: no click id (organic visit)", event_name)
            return TrackResult("skipped", event, reason="no click id (organic visit)")
        return await self.send(event)

    async def track_sale(
        self,
        *,
        customer_external_id: str | None = None,
        amount: int,
        currency: str = "usd",
        event_name: str = "Purchase",
        payment_processor: str = "custom",
        invoice_id: str | None = None,
        lead_event_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        click_id: str | None = None,
        customer_name: str | None = None,
        customer_email: str | None = None,
        customer_avatar: str | None = None,
        external_id: str | None = None,
        customer_id: str | None = None,
    ) -> TrackResult:
        """Track a sale; ``amount`` is an integer in cents. ``click_id`` enables direct sales.

        Example:
            >>> async def on_paid(tracker, invoice):
            ...     await tracker.track_sale(customer_external_id=invoice.user_id,
            ...                              amount=invoice.cents, invoice_id=invoice.id)
        """
        event = validate_event(
            "sale",
            customer_external_id=_external_id(
                "sale",
                customer_external_id=customer_external_id,
                external_id=external_id,
                customer_id=customer_id,
            ),
            amount=amount,
            currency=currency,
            event_name=event_name,
            payment_processor=payment_processor,
            invoice_id=invoice_id,
            lead_event_name=lead_event_name,
            metadata=metadata,
            click_id=click_id,
            customer_name=customer_name,
            customer_email=customer_email,
            customer_avatar=customer_avatar,
        )
        return await self.send(event)

    async def track_customer(
        self,
        *,
        customer_id: str | None = None,
        customer_name: str | None = None,
        customer_email: str | None = None,
        customer_avatar: str | None = None,
        customer_external_id: str | None = None,
        external_id: str | None = None,
    ) -> TrackResult:
        """Update a customer's name, email or avatar by their external id.

        Example:
            >>> async def on_profile_change(tracker, user):
            ...     await tracker.track_customer(customer_id=str(user.id), customer_name=user.name)
        """
        event = validate_event(
            "customer",
            customer_id=_external_id(
                "customer",
                customer_id=customer_id,
                customer_external_id=customer_external_id,
                external_id=external_id,
            ),
            customer_name=customer_name,
            customer_email=customer_email,
            customer_avatar=customer_avatar,
        )
        return await self.send(event)


def _attribution_of(request: HTTPConnection | None) -> Attribution:
    if request is not None:
        return get_attribution(request)
    attribution = current_attribution.get()
    if attribution is None:
        raise RuntimeError(
            "no request being handled: pass the request, or call tracker.track_* directly"
        )
    return attribution


def _tracker_of(attribution: Attribution) -> Tracker:
    assert attribution.tracker is not None  # the middleware always sets it
    return attribution.tracker


def _with_verified(
    tracker: Tracker, attribution: Attribution, metadata: dict[str, Any] | None
) -> dict[str, Any] | None:
    key = tracker.verified_metadata_key
    if key is None:
        return metadata
    return {**(metadata or {}), key: attribution.verified}


async def track_lead(
    request: HTTPConnection | None,
    event_name: str,
    *,
    customer_external_id: str | None = None,
    customer_name: str | None = None,
    customer_email: str | None = None,
    customer_avatar: str | None = None,
    event_quantity: int | None = None,
    mode: str | None = None,
    metadata: dict[str, Any] | None = None,
    external_id: str | None = None,
    customer_id: str | None = None,
) -> TrackResult:
    """Track a lead for the click behind ``request``; skipped (not an error) if there is none.

    Example:
        >>> async def signup(request):
        ...     user = ...  # create the account
        ...     await track_lead(request, "Sign up", customer_external_id="user_42",
        ...                      customer_email="ada@example.com")
    """
    attribution = _attribution_of(request)
    tracker = _tracker_of(attribution)
    return await tracker.track_lead(
        click_id=attribution.click_id,
        event_name=event_name,
        customer_external_id=customer_external_id,
        customer_name=customer_name,
        customer_email=customer_email,
        customer_avatar=customer_avatar,
        event_quantity=event_quantity,
        mode=mode,
        metadata=_with_verified(tracker, attribution, metadata),
        external_id=external_id,
        customer_id=customer_id,
    )


async def track_sale(
    request: HTTPConnection | None,
    *,
    customer_external_id: str | None = None,
    amount: int,
    currency: str = "usd",
    event_name: str = "Purchase",
    payment_processor: str = "custom",
    invoice_id: str | None = None,
    lead_event_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    customer_name: str | None = None,
    customer_email: str | None = None,
    customer_avatar: str | None = None,
    external_id: str | None = None,
    customer_id: str | None = None,
) -> TrackResult:
    """Track a sale, with the request's click id when present (direct sale tracking).

    Example:
        >>> async def checkout_done(request):
        ...     await track_sale(request, customer_external_id="user_42", amount=4900,
        ...                      invoice_id="in_123")
    """
    attribution = _attribution_of(request)
    tracker = _tracker_of(attribution)
    return await tracker.track_sale(
        customer_external_id=customer_external_id,
        amount=amount,
        currency=currency,
        event_name=event_name,
        payment_processor=payment_processor,
        invoice_id=invoice_id,
        lead_event_name=lead_event_name,
        metadata=_with_verified(tracker, attribution, metadata),
        click_id=attribution.click_id,
        customer_name=customer_name,
        customer_email=customer_email,
        customer_avatar=customer_avatar,
        external_id=external_id,
        customer_id=customer_id,
    )


async def track_customer(
    request: HTTPConnection | None,
    *,
    customer_id: str | None = None,
    customer_name: str | None = None,
    customer_email: str | None = None,
    customer_avatar: str | None = None,
    customer_external_id: str | None = None,
    external_id: str | None = None,
) -> TrackResult:
    """Update the customer's details with the request's tracker.

    Example:
        >>> async def profile(request):
        ...     await track_customer(request, customer_id="user_42", customer_name="Ada")
    """
    attribution = _attribution_of(request)
    return await _tracker_of(attribution).track_customer(
        customer_id=customer_id,
        customer_name=customer_name,
        customer_email=customer_email,
        customer_avatar=customer_avatar,
        customer_external_id=customer_external_id,
        external_id=external_id,
    )


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
    **options: Any,
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
