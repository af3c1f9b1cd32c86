"""Link-attribution providers: where their click id lives and how they want events.

A :class:`Provider` is plain data plus one function, :meth:`Provider.render`, that turns a
provider-neutral event into the exact HTTP request the provider's API expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from ._exceptions import InvalidEventError
from .events import CustomerEvent, Event, LeadEvent, SaleEvent
from .limits import DUB_PAYMENT_PROCESSORS, PIMMS_PAYMENT_PROCESSORS

__all__ = ["DUB", "PIMMS", "Provider", "ProviderRequest", "get_provider"]


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One HTTP request to a provider, without credentials.

    Example:
        >>> DUB.render(LeadEvent(click_id="c1", event_name="Sign up",
        ...                      customer_external_id="u_1")).path
        '/track/lead'
    """

    method: Literal["POST", "PATCH"]
    path: str
    json: dict[str, Any]


# Event fields -> JSON keys shared by both providers (both speak camelCase).
_COMMON_KEYS = {
    "click_id": "clickId",
    "event_name": "eventName",
    "customer_name": "customerName",
    "customer_email": "customerEmail",
    "customer_avatar": "customerAvatar",
    "event_quantity": "eventQuantity",
    "mode": "mode",
    "metadata": "metadata",
    "amount": "amount",
    "currency": "currency",
    "payment_processor": "paymentProcessor",
    "invoice_id": "invoiceId",
    "lead_event_name": "leadEventName",
}


@dataclass(frozen=True, slots=True)
class Provider:
    """A link-attribution provider's cookies, query parameters, API and JSON dialect.

    Use :data:`DUB` or :data:`PIMMS`, or build your own for a compatible API.

    Example:
        >>> DUB.cookie_names, PIMMS.cookie_names
        (('dub_id',), ('pimms_id', 'dclid'))
        >>> custom = Provider(name="acme", cookie_names=("acme_id",), query_param="acme_id",
        ...                   base_url="https://api.acme.test", api_key_env="ACME_API_KEY")
    """

    name: str
    cookie_names: tuple[str, ...]
    query_param: str
    base_url: str
    api_key_env: str
    no_track_param: str | None = None
    partner_cookie: str | None = None
    customer_key: str = "customerExternalId"
    modes: tuple[str, ...] = ("async", "wait", "deferred")
    payment_processors: tuple[str, ...] = DUB_PAYMENT_PROCESSORS
    #: Processors this provider records under another name (PIMMS: ``apple`` -> ``custom``).
    payment_processor_aliases: dict[str, str] = field(default_factory=dict)
    # Dub updates customers with PATCH /customers/ext_{id}; the legacy endpoint takes a body.
    legacy_customer_endpoint: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def cookie_name(self) -> str:
        """The cookie the middleware writes on a landing (the first of ``cookie_names``)."""
        return self.cookie_names[0]

    def render(self, event: Event) -> ProviderRequest:
        """Turn ``event`` into this provider's request: path, method and camelCase JSON.

        Unset optionals are left out (no nulls). Raises :class:`InvalidEventError` when the
        event uses something this provider does not support.

        Example:
            >>> PIMMS.render(LeadEvent(click_id="c1", event_name="Sign up",
            ...                        customer_external_id="u_1")).json["externalId"]
            'u_1'
        """
        if isinstance(event, LeadEvent):
            if event.mode is not None and event.mode not in self.modes:
                raise InvalidEventError(
                    "lead", [("mode", f"{self.name} supports {', '.join(self.modes)}")]
                )
            return ProviderRequest("POST", "/track/lead", self._body(event))
        if isinstance(event, SaleEvent):
            processor = event.payment_processor
            processor = self.payment_processor_aliases.get(processor, processor)
            if processor not in self.payment_processors:
                allowed = ", ".join(self.payment_processors)
                raise InvalidEventError("sale", [("payment_processor", f"{self.name}: {allowed}")])
            body = self._body(event)
            body["paymentProcessor"] = processor
            # Sales are deduplicated by invoice id only: without one, a repeated delivery of
            # the same event (after an ambiguous timeout) would be a second commission.
            body.setdefault("invoiceId", event.event_id)
            return ProviderRequest("POST", "/track/sale", body)
        return self._render_customer(event)

    def _body(self, event: LeadEvent | SaleEvent) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name, value in event:
            if value is None or name in ("event_id", "kind", "metadata"):
                continue
            key = self.customer_key if name == "customer_external_id" else _COMMON_KEYS[name]
            body[key] = value
        if event.metadata is not None:
            body["metadata"] = event.metadata
        return body

    def _render_customer(self, event: CustomerEvent) -> ProviderRequest:
        if self.legacy_customer_endpoint:
            body = {"customerId": event.customer_id}
            for name, key in (
                ("customer_name", "customerName"),
                ("customer_email", "customerEmail"),
                ("customer_avatar", "customerAvatar"),
            ):
                if (value := getattr(event, name)) is not None:
                    body[key] = value
            return ProviderRequest("POST", "/track/customer", body)
        patch: dict[str, Any] = {}
        for name, key in (
            ("customer_name", "name"),
            ("customer_email", "email"),
            ("customer_avatar", "avatar"),
        ):
            if (value := getattr(event, name)) is not None:
                patch[key] = value
        # The external id is user data: escape it so it stays one path segment.
        path = "/customers/ext_" + quote(event.customer_id, safe="")
        return ProviderRequest("PATCH", path, patch)


DUB = Provider(
    name="dub",
    cookie_names=("dub_id",),
    query_param="dub_id",
    no_track_param="dub-no-track",
    partner_cookie="dub_partner_data",
    base_url="https://api.dub.co",
    api_key_env="DUB_API_KEY",
)
"""Dub (dub.co): cookie ``dub_id``, ``?dub_id=``, partner data in ``dub_partner_data``."""

PIMMS = Provider(
    name="pimms",
    # PIMMS' script still honours the legacy `dclid` cookie, after its own.
    cookie_names=("pimms_id", "dclid"),
    query_param="pimms_id",
    no_track_param="pimms-no-track",
    base_url="https://api.pimms.io",
    api_key_env="PIMMS_API_KEY",
    customer_key="externalId",
    modes=("async", "wait"),
    payment_processors=PIMMS_PAYMENT_PROCESSORS,
    payment_processor_aliases={"apple": "custom", "revenuecat": "custom", "dub": "custom"},
    legacy_customer_endpoint=True,
)
"""PIMMS (pimms.io): cookie ``pimms_id`` (then legacy ``dclid``), JSON key ``externalId``."""

_BY_NAME = {"dub": DUB, "pimms": PIMMS}


def get_provider(provider: str | Provider) -> Provider:
    """Resolve ``"dub"``, ``"pimms"`` or a :class:`Provider` instance.

    Example:
        >>> get_provider("pimms").base_url
        'https://api.pimms.io'
    """
    if isinstance(provider, Provider):
        return provider
    try:
        return _BY_NAME[provider.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown provider {provider!r}: use 'dub', 'pimms' or a Provider instance"
        ) from None
