"""Conversion events: the per-call fields of ``track_*``, the provider-neutral models, and their
validation, done once.

The fields a caller passes are declared once as ``TypedDict``s (:class:`LeadFields`,
:class:`SaleFields`, ...; PostHog's ``args.py`` is the model): the
:class:`~asgi_attribution.Tracker` methods and the request helpers take them with ``Unpack``, so
the list exists once and type checkers still check every call; ``None`` means "not given". The
tracker builds a :class:`LeadEvent`, :class:`SaleEvent`, :class:`CustomerEvent` or
:class:`RefundEvent` from them and validates it here, with the providers' limits from
:mod:`._limits`, before anything is queued; a provider turns it into its JSON only at the edge
(:mod:`._providers`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from typing_extensions import Required, TypedDict

from ._exceptions import InvalidEventError
from ._limits import (
    AVATAR_DATA_PATTERN,
    CLICK_ID_PATTERN,
    DUB_PAYMENT_PROCESSORS,
    EMAIL_MAX_LENGTH,
    EMAIL_PATTERN,
    EVENT_NAME_MAX_LENGTH,
    EVENT_QUANTITY_RANGE,
    EXTERNAL_ID_MAX_LENGTH,
    INVOICE_ID_MAX_LENGTH,
    MAX_SAFE_INTEGER,
    METADATA_MAX_LENGTH,
    NAME_MAX_LENGTH,
    PIMMS_PAYMENT_PROCESSORS,
    js_length,
    json_js_length,
)

__all__ = [
    "CUSTOMER_FIELDS",
    "ORDER_HOLDS",
    "ORDER_WAITS",
    "VISITOR_FIELDS",
    "CallOptions",
    "CustomerEvent",
    "CustomerFields",
    "CustomerIdentity",
    "Event",
    "LeadEvent",
    "LeadFields",
    "LeadOptions",
    "OrderKey",
    "RefundEvent",
    "SaleEvent",
    "SaleFields",
    "new_event_id",
    "order_keys",
    "take_external_id",
    "validate_event",
    "validate_fields",
]


class CallOptions(TypedDict, total=False):
    """How the call is made, not what it says.

    ``within``: an open transaction (a psycopg ``AsyncConnection``, or a SQLAlchemy
    ``AsyncConnection`` / ``AsyncSession``) that the event joins, with a PostgreSQL outbox:
    your commit stores it, your rollback discards it.
    """

    within: object | None


class CustomerIdentity(CallOptions, total=False):
    """Who the customer is: their id in your system, and what the provider shows of them.

    ``external_id`` and ``customer_id`` are legacy names of ``customer_external_id``.
    """

    customer_external_id: str | None
    customer_name: str | None
    customer_email: str | None
    customer_avatar: str | None
    external_id: str | None
    customer_id: str | None


class LeadOptions(TypedDict, total=False):
    """The options of a lead other than the customer (also :func:`tracks_lead`'s options)."""

    event_quantity: int | None
    mode: str | None
    metadata: dict[str, Any] | None


class LeadFields(CustomerIdentity, LeadOptions, total=False):
    """Everything a lead takes besides its click id and event name."""


class SaleFields(CustomerIdentity, total=False):
    """A sale's fields besides the click id; ``amount`` (integer cents) is required."""

    amount: Required[int]
    currency: str | None
    event_name: str | None
    payment_processor: str | None
    invoice_id: str | None
    lead_event_name: str | None
    metadata: dict[str, Any] | None


#: A customer update takes exactly the identity fields (``customer_id`` first among its names).
CustomerFields = CustomerIdentity

Mode = Literal["async", "wait", "deferred"]

#: Every processor some provider accepts; each provider refuses (or maps) the ones it lacks.
PAYMENT_PROCESSORS = tuple(dict.fromkeys((*DUB_PAYMENT_PROCESSORS, *PIMMS_PAYMENT_PROCESSORS)))


def _at_most(limit: int) -> AfterValidator:
    """A string limit as the providers count it: JavaScript's ``length`` (UTF-16 units)."""

    def check(value: str) -> str:
        # js_length inlined for the common ASCII case: this runs for every field of every event.
        length = len(value) if value.isascii() else js_length(value)
        if length > limit:
            raise ValueError(f"must be at most {limit} characters (got {length})")
        return value

    return AfterValidator(check)


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    return AfterValidator(check)


def _http_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


# The providers trim these before their min(1) check: "  " is refused, " u1" is "u1".
_TRIMMED = StringConstraints(strip_whitespace=True, min_length=1)

EventName = Annotated[str, _TRIMMED, _at_most(EVENT_NAME_MAX_LENGTH)]

ExternalId = Annotated[str, _TRIMMED, _at_most(EXTERNAL_ID_MAX_LENGTH)]

AvatarUrl = Annotated[str, AfterValidator(_http_url)]

# Dub's track routes take customerAvatar as any string and upload it to its storage, which
# reads a URL, bare base64 or a data:image/...;base64 URI and refuses the rest, dropping the
# avatar after answering 200 (lib/storage.ts). The customer PATCH keeps a URL (AvatarUrl).
_AVATAR_DATA = re.compile(AVATAR_DATA_PATTERN)


def _avatar(value: str) -> str:
    if value and _AVATAR_DATA.fullmatch(value):
        return value
    try:
        return _http_url(value)
    except ValueError:
        raise ValueError(
            "must be an http:// or https:// URL, base64 image data or a "
            "data:image/...;base64,... URI"
        ) from None


Avatar = Annotated[str, AfterValidator(_avatar)]

Country = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True)]

Name = Annotated[str, _at_most(NAME_MAX_LENGTH)]

Email = Annotated[str, StringConstraints(pattern=EMAIL_PATTERN), _at_most(EMAIL_MAX_LENGTH)]

InvoiceId = Annotated[str, StringConstraints(min_length=1), _at_most(INVOICE_ID_MAX_LENGTH)]

# A lead's click id may be "" (Dub's deferred flow); a sale's, when given, may not.
LeadClickId = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=CLICK_ID_PATTERN.replace("{1,", "{0,"))
]

SaleClickId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=CLICK_ID_PATTERN)]

#: Fields a visitor typed (a signup form): when they break a limit the event is still sent
#: without them, so a long name never costs the partner their lead.
VISITOR_FIELDS = frozenset({"customer_name", "customer_email", "customer_avatar"})

PaymentProcessor = Annotated[str, _one_of(PAYMENT_PROCESSORS)]


def _metadata_fits(value: dict[str, Any]) -> dict[str, Any]:
    size = json_js_length(value)  # as Dub measures: JSON.stringify(metadata).length
    if size > METADATA_MAX_LENGTH:
        raise ValueError(
            f"must be at most {METADATA_MAX_LENGTH:,} characters as JSON (got {size:,})"
        )
    return value


# Checked inside the Optional: an event without metadata (most) calls no Python for it.
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata_fits)]


def new_event_id() -> str:
    """A fresh unique event id, also used as the ``Idempotency-Key`` header.

    Time-ordered, as a UUIDv7 is: 16 hex digits of the wall clock in nanoseconds, then 64
    random bits. An outbox's unique index then grows at its right edge instead of touching a
    random page per event (a burst of 50 signups commits into a few pages, not 50).

    Example:
        >>> a, b = new_event_id(), new_event_id()
        >>> len(a), a.startswith("evt_"), a != b
        (36, True, True)
    """
    return f"evt_{time.time_ns():016x}{os.urandom(8).hex()}"


class _EventBase(BaseModel):
    # python-re: Dub's email pattern uses look-aheads, which pydantic's default engine lacks.
    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    # Sent as the Idempotency-Key header: visible ASCII only, checked at the call (a CR/LF or
    # a space would otherwise fail at send time, after the event was accepted).
    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=100)
    metadata: Metadata | None = None

    @field_validator("event_id")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        if not (value.isascii() and value.isprintable()) or " " in value:
            raise ValueError(
                "must be visible ASCII, without spaces or control characters such as CR/LF "
                "(it is sent as the Idempotency-Key header)"
            )
        return value


class LeadEvent(_EventBase):
    """A signup (or any lead) credited to a click.

    ``customer_avatar`` is an http(s) URL, base64 image data or a ``data:image/...;base64,...``
    URI, as Dub's track routes take it (a customer update needs a URL).

    Example:
        >>> LeadEvent(click_id="abc123", event_name="Sign up", customer_external_id="u_1").kind
        'lead'
    """

    kind: Literal["lead"] = "lead"
    click_id: LeadClickId
    event_name: EventName
    customer_external_id: ExternalId
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: Avatar | None = None
    event_quantity: (
        Annotated[StrictInt, Field(ge=EVENT_QUANTITY_RANGE[0], le=EVENT_QUANTITY_RANGE[1])] | None
    ) = None
    mode: Mode | None = None


class SaleEvent(_EventBase):
    """A sale by a customer; ``amount`` is an integer in the currency's smallest unit (cents).

    Without ``invoice_id`` the event id is sent as the provider's ``invoiceId``, which is what
    the providers deduplicate sales by. ``customer_avatar`` (a direct sale's new customer) is
    taken as by :class:`LeadEvent`.

    Example:
        >>> SaleEvent(customer_external_id="u_1", amount=4900).currency
        'usd'
    """

    kind: Literal["sale"] = "sale"
    customer_external_id: ExternalId
    amount: Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)] = "usd"
    event_name: EventName = "Purchase"
    payment_processor: PaymentProcessor = "custom"
    invoice_id: InvoiceId | None = None
    lead_event_name: EventName | None = None
    click_id: SaleClickId | None = None
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: Avatar | None = None


class CustomerEvent(_EventBase):
    """An update of a customer's details by their external id.

    ``stripe_customer_id`` links recurring Stripe sales (Dub only). ``country`` is ISO 3166-1
    alpha-2 and is not sent to Dub, whose route reads it and drops it (a WARNING says so once);
    PIMMS refuses it.

    Example:
        >>> CustomerEvent(customer_id="u_1", customer_name="Ada").customer_name
        'Ada'
    """

    kind: Literal["customer"] = "customer"
    customer_id: ExternalId
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: AvatarUrl | None = None
    stripe_customer_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = (
        None
    )
    country: Country | None = None


class RefundEvent(_EventBase):
    """A refund of the sale with ``invoice_id``: in full (``amount=None``) or of ``amount`` cents.

    It changes the partner's commission on that sale (Dub's commissions API), so it needs the
    invoice id the sale was tracked with. ``currency`` (of ``amount``) only goes with an amount.

    Example:
        >>> RefundEvent(invoice_id="in_1").amount is None
        True
        >>> RefundEvent(invoice_id="in_1", amount=1000, currency="EUR").currency
        'eur'
    """

    kind: Literal["refund"] = "refund"
    invoice_id: InvoiceId
    amount: Annotated[StrictInt, Field(gt=0, le=MAX_SAFE_INTEGER)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)] | None = (
        None
    )

    @field_validator("currency")
    @classmethod
    def _only_with_amount(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("amount") is None:
            raise ValueError("only with amount (a partial refund): a full refund has none")
        return value


Event = LeadEvent | SaleEvent | CustomerEvent | RefundEvent

_MODELS: dict[str, type[LeadEvent] | type[SaleEvent] | type[CustomerEvent] | type[RefundEvent]] = {
    "lead": LeadEvent,
    "sale": SaleEvent,
    "customer": CustomerEvent,
    "refund": RefundEvent,
}

# Each model's validator, read once: the attribute read through pydantic's metaclass (which has
# a __getattr__) costs ten times a dict lookup, on every event.
_VALIDATORS = {kind: model.__pydantic_validator__ for kind, model in _MODELS.items()}


#: Each event kind's field naming its customer (a refund names none).
CUSTOMER_FIELDS = {
    "lead": "customer_external_id",
    "sale": "customer_external_id",
    "customer": "customer_id",
}

#: An order key: (key space, value), a customer ``("customer", external id)`` or an invoice
#: ``("invoice", invoice id)``. A queue or an outbox adds the provider.
OrderKey = tuple[str, str]

#: Causal order: the (key space, field) each kind of event *waits on*. It is not attempted while
#: an event that *holds* the same key (:data:`ORDER_HOLDS`), tracked before it, is unfinished.
ORDER_WAITS = {
    "sale": ("customer", "customer_external_id"),
    "customer": ("customer", "customer_id"),
    "refund": ("invoice", "invoice_id"),
}

#: The (key space, field) each kind of event *holds* until it is finished: a lead its customer,
#: a sale its invoice (when it has an invoice id). So a refund waits for its sale, which waits
#: for its customer's lead.
ORDER_HOLDS = {
    "lead": ("customer", "customer_external_id"),
    "sale": ("invoice", "invoice_id"),
}


def order_keys(kind: str, fields: Mapping[str, Any]) -> tuple[OrderKey | None, OrderKey | None]:
    """The order keys an event of ``kind`` with ``fields`` waits on and holds (None: none).

    Example:
        >>> order_keys("sale", {"customer_external_id": "u_1", "invoice_id": "in_1"})
        (('customer', 'u_1'), ('invoice', 'in_1'))
        >>> order_keys("refund", {"invoice_id": "in_1"}), order_keys("sale", {})
        ((('invoice', 'in_1'), None), (None, None))
    """
    return _key(ORDER_WAITS, kind, fields), _key(ORDER_HOLDS, kind, fields)


def _key(
    table: dict[str, tuple[str, str]], kind: str, fields: Mapping[str, Any]
) -> OrderKey | None:
    found = table.get(kind)
    value = None if found is None else fields.get(found[1])
    return None if found is None or value is None else (found[0], value)


# The names a customer's external id goes by in a call (the current first); the other two are
# the names the Dub SDKs use.
_EXTERNAL_ID_NAMES = ("customer_external_id", "external_id", "customer_id")

_OTHER_NAMES = {name: frozenset(_EXTERNAL_ID_NAMES) - {name} for name in _EXTERNAL_ID_NAMES}


def take_external_id(kind: str, fields: dict[str, Any]) -> None:
    """Move the customer's external id in a call's ``fields`` from any of its names to the
    field the ``kind`` of event keeps it in (:data:`CUSTOMER_FIELDS`); given twice, the values
    must agree (else :class:`InvalidEventError`).

    Example:
        >>> fields = {"external_id": "u_1", "customer_external_id": "u_1"}
        >>> take_external_id("lead", fields)
        >>> fields
        {'customer_external_id': 'u_1'}
    """
    target = CUSTOMER_FIELDS.get(kind)
    if target is None or (target in fields and _OTHER_NAMES[target].isdisjoint(fields)):
        return  # the current name alone (nearly always): nothing to move or compare
    names = [name for name in _EXTERNAL_ID_NAMES if name in fields]
    if len(names) == 1:  # one name given: nothing to compare
        fields[target] = fields.pop(names[0])
        return
    given = {name: fields.pop(name) for name in names if fields.get(name) is not None}
    if len(set(given.values())) > 1:
        both = " and ".join(given)
        raise InvalidEventError(kind, [(both, "give the customer's external id once")])
    fields[target] = next(iter(given.values()), None)


def _reason(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1:] in (("customer_email",),):
        return f"must be an email address of at most {EMAIL_MAX_LENGTH} characters"
    if error["type"] == "string_pattern_mismatch" and "click_id" in error["loc"]:
        return "must be 1-64 letters, digits, '_' or '-'"
    if isinstance(error.get("input"), str) and error["type"].startswith("string_too"):
        msg += f" (got {len(error['input'])})"
    return msg


def validate_event(kind: str, **fields: Any) -> Event:
    """Build a validated event of ``kind`` ("lead", "sale", "customer" or "refund").

    Raises :class:`InvalidEventError` naming each bad field and its limit; ``None`` values are
    treated as unset.

    Example:
        >>> validate_event("lead", click_id="c1", event_name="Sign up",
        ...                customer_external_id="u_1").event_name
        'Sign up'
    """
    return validate_fields(kind, fields)


def validate_fields(kind: str, fields: dict[str, Any]) -> Event:
    """:func:`validate_event` for fields already in a dict (it may be changed).

    Example:
        >>> validate_fields("sale", {"customer_external_id": "u_1", "amount": 100}).amount
        100
    """
    validator = _VALIDATORS[kind]
    try:
        has_none = None in fields.values()  # a scan in C; the comprehension only if needed
    except Exception:  # a value whose == raises (pandas.NA): pydantic names the field
        has_none = True
    if has_none:
        for key in [key for key, value in fields.items() if value is None]:
            del fields[key]
    try:
        # The model's validator on the dict as it is: not unpacked into keywords and back, and
        # without model_validate's Python frame around it.
        return validator.validate_python(fields)  # type: ignore[no-any-return]
    except ValidationError as exc:
        errors = [
            (".".join(str(part) for part in err["loc"]) or kind, _reason(err))
            for err in exc.errors()
        ]
        raise InvalidEventError(kind, errors) from None
