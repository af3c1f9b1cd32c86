"""The :class:`Tracker`: one per app, it knows the provider and how events reach it.

It validates each event once, then hands it to its transport stack (built here from the
options, or given), or to an active override (:mod:`asgi_attribution.overrides`, used by
``capture_events`` in tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr
from typing_extensions import Unpack

from ._args import CustomerFields, LeadFields, SaleFields
from ._exceptions import DeliveryError, MissingClickIdError
from ._options import flag, number
from .building import build_event
from .delivery import DELIVERY_OPTIONS, build_stack
from .events import Event, SaleEvent, validate_event
from .overrides import as_configured, transport_overrides
from .pending import Tracking
from .providers import Provider, get_provider
from .skipped import ready, unrecorded_sale
from .transports import (
    BackgroundTransport,
    Delivery,
    OutboxStore,
    OutboxTransport,
    RetryPolicy,
    TrackResult,
    Transport,
)
from .transports.background import DeliveredCallback, DropCallback, ErrorCallback

__all__ = ["Tracker"]

logger = logging.getLogger("asgi_attribution")


class Tracker:
    """Knows the provider and how events reach it; one per app.

    ``provider`` is ``"dub"``, ``"pimms"`` or a :class:`Provider`. ``api_key`` defaults to
    ``DUB_API_KEY`` / ``PIMMS_API_KEY`` and is never shown. Delivery, by the options given:

    - default: queued in memory and delivered in the background over HTTP with retries
      (:class:`BackgroundTransport`: ``queue_size``, ``queue_full_timeout``, ``on_drop``);
    - ``outbox=`` (a SQLite file path, a ``redis://`` URL or an :class:`OutboxStore`): stored
      durably before ``track_*`` returns and delivered from the store (:class:`OutboxTransport`);
      ``deliver=False`` only appends, for instances whose events a separate
      ``asgi-attribution outbox deliver --follow`` worker delivers;
    - ``background=False``: sent inline, returning the provider's answer;
    - ``transport=``: your own transport (for example :class:`MemoryTransport`), as is.

    Shared by the built deliveries: ``timeout`` (seconds per HTTP attempt, default 10),
    ``retry`` (:class:`RetryPolicy`), ``concurrency`` (requests at once, default 10),
    ``shutdown_timeout`` (seconds the drain may take, default 20) and ``on_error(delivery,
    exc)`` for final failures. An option the chosen delivery would ignore raises ``TypeError``
    naming both. With ``require_click_id=True`` a lead without a click id raises instead of
    being skipped; ``verified_metadata_key`` adds the request's ``Attribution.verified`` flag to
    the metadata of events tracked from a request. ``tracker.stats`` counts what happened.

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
        inline_timeout: float = 10.0,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
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
        self.inline_timeout = float(inline_timeout)
        self.require_click_id = require_click_id
        self.verified_metadata_key = verified_metadata_key
        self._started = False
        self._closing = False
        self._warned_unowned = False
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._loop = asyncio.get_running_loop()
        if self._http is not None and self._api_key is None:
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
            self._loop = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that owns delivery while the tracker is started, else ``None``.

        Code on another thread (a sync view, a task queue worker) hands its events to it.

        Example:
            >>> Tracker("dub", transport=MemoryTransport()).loop is None
            True
        """
        return self._loop

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
        if not self._started:
            if isinstance(self.transport, BackgroundTransport) and self._http is not None:
                # Nobody owns a background queue here (no lifespan, no `async with`): a queue
                # would die with this event loop, so the event goes out before we return.
                self._warn_unowned("each event is sent inline, before track_* returns")
                return await self._send_inline(delivery)
            self._warn_unowned("it was started on first use")
            await self.start()
        transport = self.transport
        if transport.counts_outcomes:
            return await transport.send(delivery)
        try:
            result = await transport.send(delivery)
        except DeliveryError:
            self.stats.count("failed", delivery)
            raise
        if result.status == "sent":
            self.stats.delivered(delivery, result)
        elif result.status == "queued":
            self.stats.count("queued", delivery)
        return result

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

    async def _send_inline(self, delivery: Delivery) -> TrackResult:
        """Deliver now, retrying within ``inline_timeout`` seconds in all; raise if not."""
        assert self._http is not None
        event_id = delivery.event.event_id
        # Without an owner nothing would ever close a shared client, and its connections
        # would outlive this event loop (asyncio.run per job): one client per send then.
        assert self._new_http is not None
        http = self._http if self._started else self._new_http()
        try:
            result = await asyncio.wait_for(http.send(delivery), self.inline_timeout)
        except asyncio.TimeoutError:
            self.stats.count("failed", delivery, reason="inline_timeout")
            raise DeliveryError(
                event_id,
                "inline_timeout",
                f"not delivered within inline_timeout={self.inline_timeout:g}s",
                retryable=True,
            ) from None
        except DeliveryError as exc:
            self.stats.count("failed", delivery, reason=exc.code)
            raise
        finally:
            if http is not self._http:
                await http.aclose()
        self.stats.delivered(delivery, result)
        return result

    def _tracking(
        self, delivery: Delivery, warnings: tuple[str, ...], what: str, within: object | None
    ) -> Tracking:
        event = delivery.event
        if within is not None:
            if not isinstance(self.transport, OutboxTransport):
                raise TypeError(
                    f"{what}(within=...) needs Tracker(outbox='postgresql://...'): only a store "
                    "in your database can join your transaction"
                )
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
        from .transports.outbox.postgres import append_within  # only PostgreSQL has it

        override = transport_overrides.current
        if override is not None:
            result = self._as_configured(await override.send(delivery))
        else:
            assert isinstance(self.transport, OutboxTransport)
            if not self._started:
                self._warn_unowned("it was started on first use")
                await self.start()
            # Not counted as queued: a rollback would leave it counted and never finished.
            result = await append_within(self.transport.store, delivery, connection)
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
            "customer_external_id",
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
        delivery, warnings = build_event(
            self.provider, "sale", values, "customer_external_id", click_id=click_id
        )
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
        delivery, warnings = build_event(self.provider, "customer", values, "customer_id")
        return self._tracking(delivery, warnings, "track_customer", within)
