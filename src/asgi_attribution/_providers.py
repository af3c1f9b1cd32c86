"""Link-attribution providers: where their click id lives and how they want events.

A :class:`Provider` is plain data plus one function, :meth:`Provider.render`, that turns a
provider-neutral event into the exact HTTP request the provider's API expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode

from ._events import CustomerEvent, Event, LeadEvent, RefundEvent, SaleEvent
from ._exceptions import InvalidEventError
from ._json import dumps
from ._limits import DUB_PAYMENT_PROCESSORS, PIMMS_PAYMENT_PROCESSORS

__all__ = [
    "DUB",
    "PIMMS",
    "REDACTED",
    "Outcome",
    "Provider",
    "ProviderRequest",
    "get_provider",
    "redact",
]


@dataclass(frozen=True)
class ProviderRequest:
    """One HTTP request to a provider, without credentials.

    ``query`` holds the query parameters of a ``GET`` (which has no body).

    Example:
        >>> DUB.render(LeadEvent(click_id="c1", event_name="Sign up",
        ...                      customer_external_id="u_1")).path
        '/track/lead'
    """

    method: Literal["GET", "POST", "PATCH"]
    path: str
    json: dict[str, Any]
    query: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> str:
        """The path with its query string, as on the request line.

        Example:
            >>> ProviderRequest("GET", "/commissions", {}, (("invoiceId", "in 1"),)).target
            '/commissions?invoiceId=in+1'
        """
        return f"{self.path}?{urlencode(self.query)}" if self.query else self.path

    def body(self) -> bytes:
        """The JSON body as sent: compact, UTF-8, non-ASCII left as is (as the providers count).

        A ``GET`` has none.

        Example:
            >>> ProviderRequest("POST", "/track/lead", {"eventName": "Café"}).body()
            b'{"eventName":"Caf\\xc3\\xa9"}'
        """
        if self.method == "GET":
            return b""
        return dumps(self.json)


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

#: What the provider did with an event, as far as its answer says.
Outcome = Literal["recorded", "duplicate", "not_recorded", "deferred", "unknown"]


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
    # Both update customers with PATCH /customers/ext_{id}. POST /track/customer, which takes
    # a body, was removed from Dub in December 2024 (PIMMS kept the removal); opt-in only.
    legacy_customer_endpoint: bool = False
    #: Customer-update fields this provider takes (JSON key by event field).
    customer_update_keys: tuple[tuple[str, str], ...] = (
        ("customer_name", "name"),
        ("customer_email", "email"),
        ("customer_avatar", "avatar"),
        ("stripe_customer_id", "stripeCustomerId"),
        ("country", "country"),
    )
    #: Whether a sale can carry a click id and customer fields (Dub's direct sale tracking).
    direct_sales: bool = True
    #: Whether a lead may have an empty click id (Dub's deferred flow).
    empty_click_id: bool = True
    #: Values the provider's own links use as placeholders, never real clicks (PIMMS: ``1``).
    placeholder_click_ids: frozenset[str] = frozenset()
    #: Whether a lead's answer says if it was recorded (Dub: ``"link": null`` for a duplicate).
    lead_answer_tells: bool = True
    #: Whether a sale with ``amount <= 0`` is recorded (Dub answers nulls; PIMMS records it).
    records_zero_amounts: bool = False
    #: The header that signs its webhooks: hex HMAC-SHA256 of the raw body.
    webhook_signature_header: str = "Dub-Signature"
    #: Why a sale answered with nulls was not recorded, when it is not ``amount <= 0``.
    sale_not_recorded_reason: str = "no_customer"
    #: Whether refunds reach partner commissions (Dub's ``/commissions`` API; PIMMS has none).
    refunds: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def cookie_name(self) -> str:
        """The cookie the middleware writes on a landing (the first of ``cookie_names``)."""
        return self.cookie_names[0]

    def check(self, event: Event) -> None:
        """Raise :class:`InvalidEventError` when ``event`` uses something this provider does
        not support (what :meth:`render` would refuse), without rendering it.

        Example:
            >>> try:
            ...     PIMMS.check(LeadEvent(click_id="", event_name="e", customer_external_id="u"))
            ... except InvalidEventError as error:
            ...     print(error.errors)
            [('click_id', 'pimms refuses an empty click id')]
        """
        if isinstance(event, LeadEvent):
            if event.mode is not None and event.mode not in self.modes:
                raise InvalidEventError(
                    "lead", [("mode", f"{self.name} supports {', '.join(self.modes)}")]
                )
            if not event.click_id and not self.empty_click_id:
                raise InvalidEventError(
                    "lead", [("click_id", f"{self.name} refuses an empty click id")]
                )
        elif isinstance(event, SaleEvent):
            if self._processor(event) not in self.payment_processors:
                allowed = ", ".join(self.payment_processors)
                raise InvalidEventError("sale", [("payment_processor", f"{self.name}: {allowed}")])
        elif isinstance(event, RefundEvent):
            if not self.refunds:
                reason = f"{self.name} has no commissions API: refund in its dashboard"
                raise InvalidEventError("refund", [("refund_sale", reason)])
        elif not self.legacy_customer_endpoint:
            for name in ("stripe_customer_id", "country"):
                if getattr(event, name) is not None and name not in dict(self.customer_update_keys):
                    raise InvalidEventError("customer", [(name, f"{self.name} does not take it")])

    def _processor(self, event: SaleEvent) -> str:
        return self.payment_processor_aliases.get(event.payment_processor, event.payment_processor)

    def render(self, event: Event) -> ProviderRequest:
        """Turn ``event`` into this provider's request: path, method and camelCase JSON.

        Unset optionals are left out (no nulls). Raises :class:`InvalidEventError` when the
        event uses something this provider does not support (see :meth:`check`).

        Example:
            >>> PIMMS.render(LeadEvent(click_id="c1", event_name="Sign up",
            ...                        customer_external_id="u_1")).json["externalId"]
            'u_1'
        """
        self.check(event)
        if isinstance(event, LeadEvent):
            return ProviderRequest("POST", "/track/lead", self._body(event))
        if isinstance(event, SaleEvent):
            body = self._body(event)
            body["paymentProcessor"] = self._processor(event)
            if not self.direct_sales:  # the provider would drop these: never send them
                for key in ("clickId", "customerName", "customerEmail", "customerAvatar"):
                    body.pop(key, None)
            # Sales are deduplicated by invoice id only: without one, a repeated delivery of
            # the same event (after an ambiguous timeout) would be a second commission.
            body.setdefault("invoiceId", event.event_id)
            return ProviderRequest("POST", "/track/sale", body)
        if isinstance(event, RefundEvent):
            # The first step: find the sale's commission (then refund_update() says the PATCH).
            return ProviderRequest("GET", "/commissions", {}, (("invoiceId", event.invoice_id),))
        return self._render_customer(event)

    def _body(self, event: LeadEvent | SaleEvent) -> dict[str, Any]:
        body: dict[str, Any] = {}
        # The field values as stored (frozen, extra="forbid"): iterating the model itself builds
        # a list per event, measurably slower on the delivery path.
        for name, value in event.__dict__.items():
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
            for name, key in _LEGACY_CUSTOMER_KEYS:
                if (value := getattr(event, name)) is not None:
                    body[key] = value
            return ProviderRequest("POST", "/track/customer", body)
        patch: dict[str, Any] = {}
        for name, key in self.customer_update_keys:
            if (value := getattr(event, name)) is not None:
                patch[key] = value
        # The external id is user data: escape it so it stays one path segment.
        path = "/customers/ext_" + quote(event.customer_id, safe="")
        return ProviderRequest("PATCH", path, patch)

    def outcome(self, event: Event, answer: Any) -> tuple[Outcome, str | None]:
        """What a 2xx ``answer`` (the parsed JSON body) says the provider did with ``event``.

        Read from the providers' code: they answer 200 for events they did not record.

        Example:
            >>> lead = LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u")
            >>> DUB.outcome(lead, {"click": {"id": "c1"}, "link": None, "customer": {}})
            ('duplicate', 'duplicate_lead')
            >>> DUB.outcome(SaleEvent(customer_external_id="u", amount=100),
            ...             {"customer": None, "sale": None})
            ('not_recorded', 'no_customer')
        """
        if not isinstance(answer, dict):
            return "unknown", "not_json"
        if isinstance(event, LeadEvent):
            if event.mode == "deferred":
                return "deferred", None
            if not self.lead_answer_tells:
                return "unknown", None
            # Dub writes the (customer, event name) key first and answers link: null after.
            if "link" in answer and answer["link"] is None:
                return "duplicate", "duplicate_lead"
            return "recorded", None
        if isinstance(event, SaleEvent):
            if answer.get("sale", False) is None:
                zero = event.amount <= 0 and not self.records_zero_amounts
                reason = "amount_zero" if zero else self.sale_not_recorded_reason
                return "not_recorded", reason
            return "recorded", None
        return "recorded", None

    def refund_update(
        self, event: RefundEvent, commissions: Any
    ) -> ProviderRequest | tuple[Outcome, str] | None:
        """The second step of a refund, from the answer of its lookup (``GET /commissions``).

        ``None`` while the sale has no commission (Dub creates it after the sale); an outcome
        when there is nothing to change; else the ``PATCH``. A full refund (or a partial one of
        at least the commission's amount) sets ``status: refunded``, which takes the commission
        out of the payout whatever its amount (an ``amount`` of 0 would be ignored); a partial
        one lowers the sale amount by ``modifyAmount`` (in ``currency``, converted by Dub), so
        refunds of one invoice add up.

        Example:
            >>> found = [{"id": "cm_1", "invoiceId": "in_1", "status": "pending",
            ...           "amount": 5000, "currency": "usd"}]
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1"), found).json
            {'status': 'refunded'}
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1", amount=1000), found).json
            {'modifyAmount': -1000}
            >>> refunded = [{**found[0], "status": "refunded"}]
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1"), refunded)
            ('duplicate', 'already_refunded')
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1"), []) is None
            True
        """
        matches = [
            item
            for item in (commissions if isinstance(commissions, list) else [])
            if isinstance(item, dict)
            and item.get("invoiceId") == event.invoice_id
            and isinstance(item.get("id"), str)
        ]
        if not matches:
            return None
        commission = matches[0]  # Dub: one commission per invoice and program
        status = commission.get("status")
        if status == "refunded":
            return "duplicate", "already_refunded"
        if status in ("paid", "duplicate", "canceled", "fraud"):
            return "not_recorded", f"commission_{status}"  # a paid one cannot change any more
        path = "/commissions/" + quote(commission["id"], safe="")
        amount, currency = event.amount, event.currency or "usd"
        whole = commission.get("amount")
        if amount is None or (
            isinstance(whole, int) and amount >= whole and currency == commission.get("currency")
        ):
            return ProviderRequest("PATCH", path, {"status": "refunded"})
        body: dict[str, Any] = {"modifyAmount": -amount}
        if event.currency is not None:
            body["currency"] = event.currency
        return ProviderRequest("PATCH", path, body)

    def accepts_click_id(self, value: str) -> bool:
        """False for the provider's own link placeholders (PIMMS' ``?pimms_id=1``).

        Example:
            >>> PIMMS.accepts_click_id("1"), DUB.accepts_click_id("1")
            (False, True)
        """
        return value not in self.placeholder_click_ids


_LEGACY_CUSTOMER_KEYS = (
    ("customer_name", "customerName"),
    ("customer_email", "customerEmail"),
    ("customer_avatar", "customerAvatar"),
)

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
    customer_update_keys=(
        ("customer_name", "name"),
        ("customer_email", "email"),
        ("customer_avatar", "avatar"),
    ),
    direct_sales=False,
    empty_click_id=False,
    placeholder_click_ids=frozenset({"1"}),
    lead_answer_tells=False,
    sale_not_recorded_reason="no_customer_or_duplicate_invoice",
    records_zero_amounts=True,
    refunds=False,
    webhook_signature_header="Pimms-Signature",
)

"""PIMMS (pimms.io): cookie ``pimms_id`` (then legacy ``dclid``), JSON key ``externalId``."""

_BY_NAME = {"dub": DUB, "pimms": PIMMS}


#: What replaces the API key in a provider's text.
REDACTED = "[redacted]"

# Shorter "keys" are test placeholders ("k"): replacing them would garble every answer.
_SECRET_MIN = 8


def redact(value: Any, secret: str | None) -> Any:
    """``value`` (a provider's text, or its parsed JSON) with ``secret`` replaced by
    :data:`REDACTED` wherever it occurs: in strings, and in the strings and keys of lists and
    objects. Applied where a provider's text enters the package, so the API key a provider
    echoes reaches no error, log line, stored row or CLI output.

    Example:
        >>> redact({"error": {"message": "bad key dub_live_0123456789"}}, "dub_live_0123456789")
        {'error': {'message': 'bad key [redacted]'}}
        >>> redact(["ok", 3, None], "dub_live_0123456789")
        ['ok', 3, None]
    """
    if not secret or len(secret) < _SECRET_MIN:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED) if secret in value else value
    if isinstance(value, list):
        return [redact(item, secret) for item in value]
    if isinstance(value, dict):
        return {redact(key, secret): redact(item, secret) for key, item in value.items()}
    return value


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
