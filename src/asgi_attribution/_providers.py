"""Link-attribution providers: where their click id lives, how they want events, and what their
answers mean.

A :class:`Provider` is plain data plus the functions of its dialect: :meth:`Provider.render`
turns a provider-neutral event into the exact HTTP request the provider's API expects;
:meth:`Provider.outcome` reads a 2xx answer and :meth:`Provider.refusal` a 4xx one that carries
the provider's JSON error envelope (``{"error": {"code", "message", "doc_url"}}``): such an
answer is about one event (a disabled link, a lead not found), never about the integration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode

from ._events import CustomerEvent, Event, LeadEvent, RefundEvent, SaleEvent
from ._exceptions import InvalidEventError
from ._json import dumps
from ._limits import DUB_PAYMENT_PROCESSORS, PIMMS_PAYMENT_PROCESSORS

__all__ = [
    "DUB",
    "LEAD_RETRY_AFTER",
    "PIMMS",
    "REDACTED",
    "ROUTE_RETRY_AFTER",
    "Outcome",
    "Provider",
    "ProviderRequest",
    "Refusal",
    "error_envelope",
    "get_provider",
    "redact",
]

logger = logging.getLogger("asgi_attribution")


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

#: Seconds at least between the attempts of a sale whose lead the provider does not show yet
#: (Dub records an ``async`` lead in the background, within seconds).
LEAD_RETRY_AFTER = 5.0

#: Seconds at least between the attempts of an event whose route alone refuses the key (403 on
#: ``/commissions`` or ``/customers`` for a key without that scope): its events are held by the
#: retry step while every other event goes on.
ROUTE_RETRY_AFTER = 60.0

# The per-event messages of Dub's route handlers (PIMMS, a fork, words them the same), read from
# track-lead.ts, track-sale.ts, get-customer-or-throw.ts, get-default-program-id-or-throw.ts and
# update-partner-commission.ts: the reason each is reported with, first match wins.
_REASONS = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"^click event not found", "click_not_found"),
        (r"^link not found for", "link_not_found"),
        (r"^link \S+ for .* does not belong to the workspace", "link_not_in_workspace"),
        (r"^link \S+ for .* is disabled", "link_disabled"),
        (r"^lead event (data )?not found", "lead_not_found"),
        (r"^customer\b.*\bnot found", "customer_not_found"),
        (r"^the `clickid` property was not provided", "no_click_id_no_customer"),
        (r"^program not found", "no_program"),
        (r"^commission \S+ not found", "commission_not_found"),
        (r"\bits payout is already\b", "payout_locked"),
        (r"\bhas already been paid\b", "commission_paid"),
        (r"\balready in the refunded status\b", "already_refunded"),
    )
)

# Envelopes that name the workspace, not the event: every event would meet them (a key of a
# deleted workspace, a personal key without workspaceId).
_WORKSPACE = re.compile(r"^workspace( id)? not found", re.IGNORECASE)

# A refused refund that is an outcome, not a failure: the commission cannot change any more.
_REFUND_OUTCOMES: dict[str, Outcome] = {
    "payout_locked": "not_recorded",
    "commission_paid": "not_recorded",
    "already_refunded": "duplicate",
}

# The routes every event kind but refunds and customer updates takes: a 403 there is the key's
# (a plan or a scope every lead needs), not one route's.
_TRACK_ROUTES = ("/track/",)


def error_envelope(body: Any) -> tuple[str, str] | None:
    """``(code, message)`` of the providers' JSON error envelope, or None when ``body`` is not
    one (an HTML page, a proxy's JSON, nothing).

    Example:
        >>> error_envelope({"error": {"code": "not_found", "message": "Program not found",
        ...                           "doc_url": "https://dub.co/docs/api-reference/errors"}})
        ('not_found', 'Program not found')
        >>> error_envelope({"detail": "Not Found"}) is None, error_envelope(None) is None
        (True, True)
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if not isinstance(error, dict):
        return None
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str) or not code:
        return None
    return code[:100], message[:500]


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a 4xx answer carrying the provider's error envelope says about one event.

    ``reason`` names it (``link_disabled``, ``lead_not_found``, ``no_program``... or the
    envelope's code). ``retry_after`` is set when it may pass (the event is retried, at least
    that many seconds apart); ``outcome`` when it is the event's outcome rather than a failure
    (a refund of a commission already refunded is a ``duplicate``).

    Example:
        >>> Refusal("link_disabled", "Link l is disabled").final
        True
    """

    reason: str
    message: str
    retry_after: float | None = None
    outcome: Outcome | None = None

    @property
    def final(self) -> bool:
        """True unless the event is worth another attempt."""
        return self.retry_after is None


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
    # Dub's PATCH /customers/{id} reads name, email, avatar, externalId, stripeCustomerId:
    # ``country`` is in its schema but never stored.
    customer_update_keys: tuple[tuple[str, str], ...] = (
        ("customer_name", "name"),
        ("customer_email", "email"),
        ("customer_avatar", "avatar"),
        ("stripe_customer_id", "stripeCustomerId"),
    )
    #: Customer-update fields the provider documents but does not store: not sent (a WARNING,
    #: once per provider, says so) rather than refused.
    unstored_customer_fields: tuple[str, ...] = ("country",)
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
    #: Whether the provider claims a sale's ``invoiceId`` before anything else (PIMMS): a retry
    #: after an attempt that got no answer then meets the claim, recorded or not.
    claims_invoice_first: bool = False
    #: Whether a lead may show to sales only seconds after its answer (Dub records an
    #: ``async`` lead in the background): a sale's 404 "Lead event not found" is retried.
    leads_show_later: bool = True
    #: Whether refunds reach partner commissions (Dub's ``/commissions`` API; PIMMS has none).
    refunds: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    # The unstored fields already warned about (a WARNING once per provider, not per event).
    _warned: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

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
            taken = {*dict(self.customer_update_keys), *self.unstored_customer_fields}
            for name in ("stripe_customer_id", "country"):
                if getattr(event, name) is not None and name not in taken:
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
        for name in self.unstored_customer_fields:
            if getattr(event, name) is not None and name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "%s does not store a customer's %s (its PATCH /customers route reads only "
                    "%s): %s is not sent; this warning is given once",
                    self.name,
                    name,
                    ", ".join(key for _, key in self.customer_update_keys),
                    name,
                )
        # The external id is user data: escape it so it stays one path segment.
        path = "/customers/ext_" + quote(event.customer_id, safe="")
        return ProviderRequest("PATCH", path, patch)

    def outcome(
        self, event: Event, answer: Any, *, unanswered_before: bool = False
    ) -> tuple[Outcome, str | None]:
        """What a 2xx ``answer`` (the parsed JSON body) says the provider did with ``event``.

        Read from the providers' code: they answer 200 for events they did not record.
        ``unanswered_before`` says an earlier attempt of the event got no answer (a timeout, a
        dropped connection, a 5xx): a sale answered with nulls by a provider that claims the
        invoice first (PIMMS) may then well be recorded, by that attempt.

        Example:
            >>> lead = LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u")
            >>> DUB.outcome(lead, {"click": {"id": "c1"}, "link": None, "customer": {}})
            ('duplicate', 'duplicate_lead')
            >>> DUB.outcome(SaleEvent(customer_external_id="u", amount=100),
            ...             {"customer": None, "sale": None})
            ('not_recorded', 'no_customer')
            >>> PIMMS.outcome(SaleEvent(customer_external_id="u", amount=100),
            ...               {"customer": None, "sale": None}, unanswered_before=True)
            ('unknown', 'maybe_recorded_earlier')
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
                if unanswered_before and self.claims_invoice_first:
                    return "unknown", "maybe_recorded_earlier"
                zero = event.amount <= 0 and not self.records_zero_amounts
                reason = "amount_zero" if zero else self.sale_not_recorded_reason
                return "not_recorded", reason
            return "recorded", None
        return "recorded", None

    def refusal(self, event: Event, path: str, status: int, body: Any) -> Refusal | None:
        """What a 4xx ``body`` answered on ``path`` says about ``event``, or None when it
        cannot be about one event (then it is the integration's: a wrong ``base_url``, the key).

        An answer that carries the provider's error envelope (:func:`error_envelope`) is about
        the event, whatever its status, except 401 (the key), a 403 on the track routes (the
        key's plan or scopes, which every lead needs) and an envelope naming the workspace. A
        403 on another route (a key without the scope for ``/commissions``) holds only that
        route's events: it is retried, :data:`ROUTE_RETRY_AFTER` apart. A sale's "Lead event
        not found" is retried where leads show later (Dub), :data:`LEAD_RETRY_AFTER` apart.
        Rate limits, timeouts and 5xx are not refusals (the retry step has them).

        Example:
            >>> envelope = {"error": {"code": "not_found",
            ...     "message": "Link lnk_1 for clickId c is disabled, lead not tracked"}}
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> DUB.refusal(lead, "/track/lead", 404, envelope).reason
            'link_disabled'
            >>> DUB.refusal(lead, "/track/lead", 404, {"detail": "Not Found"}) is None
            True
            >>> missing = {"error": {"code": "not_found", "message":
            ...     "Lead event not found for externalId: u and leadEventName: Sign up"}}
            >>> sale = SaleEvent(customer_external_id="u", amount=100)
            >>> DUB.refusal(sale, "/track/sale", 404, missing).retry_after
            5.0
            >>> PIMMS.refusal(sale, "/track/sale", 404, missing).final
            True
        """
        if not 400 <= status < 500 or status in (401, 408, 425, 429):
            return None
        envelope = error_envelope(body)
        if envelope is None:
            return None
        code, message = envelope
        if _WORKSPACE.match(message):
            return None
        if status == 403:
            if path.startswith(_TRACK_ROUTES):
                return None
            hint = f"{message} (only {path} refuses the key: its events wait, others go on)"
            return Refusal(code, hint, retry_after=ROUTE_RETRY_AFTER)
        reason = next((reason for pattern, reason in _REASONS if pattern.search(message)), code)
        if reason == "lead_not_found" and isinstance(event, SaleEvent) and self.leads_show_later:
            return Refusal(reason, message, retry_after=LEAD_RETRY_AFTER)
        if isinstance(event, RefundEvent) and reason in _REFUND_OUTCOMES:
            return Refusal(reason, message, outcome=_REFUND_OUTCOMES[reason])
        return Refusal(reason, message)

    def ignores_sale(self, event: SaleEvent) -> bool:
        """True for a sale the provider would answer 200 and do nothing with, so it is not sent.

        Dub answers nulls for ``amount <= 0``, but only after a direct sale's click id has made
        the customer and its lead: with a click id, the sale is sent.

        Example:
            >>> DUB.ignores_sale(SaleEvent(customer_external_id="u", amount=0))
            True
            >>> DUB.ignores_sale(SaleEvent(customer_external_id="u", amount=0, click_id="c1"))
            False
            >>> PIMMS.ignores_sale(SaleEvent(customer_external_id="u", amount=0))
            False
        """
        if event.amount > 0 or self.records_zero_amounts:
            return False
        return not (self.direct_sales and event.click_id)

    def refund_update(
        self, event: RefundEvent, commissions: Any
    ) -> ProviderRequest | tuple[Outcome, str] | None:
        """The second step of a refund, from the answer of its lookup (``GET /commissions``).

        ``None`` while the sale has no commission (Dub creates it after the sale); an outcome
        when there is nothing to change; else the ``PATCH``. A full refund (or a partial one of
        at least the commission's amount) sets ``status: refunded``, which takes the commission
        out of the payout whatever its amount (an ``amount`` of 0 would be ignored); a partial
        one lowers the sale amount by ``modifySaleAmount`` (in ``currency``, converted by Dub),
        so refunds of one invoice add up.

        Example:
            >>> found = [{"id": "cm_1", "invoiceId": "in_1", "status": "pending",
            ...           "amount": 5000, "currency": "usd"}]
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1"), found).json
            {'status': 'refunded'}
            >>> DUB.refund_update(RefundEvent(invoice_id="in_1", amount=1000), found).json
            {'modifySaleAmount': -1000}
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
        body: dict[str, Any] = {"modifySaleAmount": -amount}
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
    claims_invoice_first=True,
    # The 404 comes after the invoice claim: a retry would only meet the claim.
    leads_show_later=False,
    unstored_customer_fields=(),
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
