"""Provider-neutral conversion events, validated once with the providers' limits.

An event is built by the tracker, checked here before anything is queued, and turned into a
provider's JSON only at the edge (see :mod:`asgi_attribution.providers`).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

from ._exceptions import AttributionError, DeliveryError, InvalidEventError, MissingClickIdError

__all__ = [
    "AttributionError",
    "CustomerEvent",
    "DeliveryError",
    "Event",
    "InvalidEventError",
    "LeadEvent",
    "MissingClickIdError",
    "SaleEvent",
    "validate_event",
]

# Dub's own email pattern from its OpenAPI spec, so we refuse exactly what Dub would refuse.
EMAIL_PATTERN = (
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]"
    r"@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
METADATA_MAX_CHARS = 10_000
PaymentProcessor = Literal[
    "stripe", "shopify", "polar", "paddle", "apple", "revenuecat", "dub", "custom"
]
Mode = Literal["async", "wait", "deferred"]
EventName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Name = Annotated[str, StringConstraints(max_length=100)]
Email = Annotated[str, StringConstraints(max_length=100, pattern=EMAIL_PATTERN)]
# Click ids are the provider's own short ids; anything else never came from a provider.
ClickId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{0,64}$")]


def new_event_id() -> str:
    """A fresh unique event id, also used as the ``Idempotency-Key`` header."""
    return "evt_" + uuid.uuid4().hex


class _EventBase(BaseModel):
    # python-re: Dub's email pattern uses look-aheads, which pydantic's default engine lacks.
    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=100)
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_fits(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            size = len(json.dumps(value, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON-serialisable ({exc})") from None
        if size > METADATA_MAX_CHARS:
            raise ValueError(
                f"must be at most {METADATA_MAX_CHARS:,} characters as JSON (got {size:,})"
            )
        return value


class LeadEvent(_EventBase):
    """A signup (or any lead) credited to a click.

    Example:
        >>> LeadEvent(click_id="abc123", event_name="Sign up", customer_external_id="u_1").kind
        'lead'
    """

    kind: Literal["lead"] = "lead"
    click_id: ClickId
    event_name: EventName
    customer_external_id: ExternalId
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: str | None = None
    event_quantity: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    mode: Mode | None = None


class SaleEvent(_EventBase):
    """A sale by a customer; ``amount`` is an integer in the currency's smallest unit (cents).

    Without ``invoice_id`` the event id is sent as the provider's ``invoiceId``, which is what
    the providers deduplicate sales by.

    Example:
        >>> SaleEvent(customer_external_id="u_1", amount=4900).currency
        'usd'
    """

    kind: Literal["sale"] = "sale"
    customer_external_id: ExternalId
    amount: Annotated[StrictInt, Field(ge=0, le=9_007_199_254_740_991)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)] = "usd"
    event_name: EventName = "Purchase"
    payment_processor: PaymentProcessor = "custom"
    invoice_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    lead_event_name: EventName | None = None
    click_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: str | None = None


class CustomerEvent(_EventBase):
    """An update of a customer's details (name, email, avatar) by their external id.

    Example:
        >>> CustomerEvent(customer_id="u_1", customer_name="Ada").customer_name
        'Ada'
    """

    kind: Literal["customer"] = "customer"
    customer_id: ExternalId
    customer_name: Name | None = None
    customer_email: Email | None = None
    customer_avatar: str | None = None


Event = LeadEvent | SaleEvent | CustomerEvent
_MODELS: dict[str, type[LeadEvent] | type[SaleEvent] | type[CustomerEvent]] = {
    "lead": LeadEvent,
    "sale": SaleEvent,
    "customer": CustomerEvent,
}


def _reason(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1:] in (("customer_email",),):
        return "must be an email address of at most 100 characters"
    if error["type"] == "string_pattern_mismatch" and "click_id" in error["loc"]:
        return "must be 1-64 letters, digits, '_' or '-'"
    if isinstance(error.get("input"), str) and error["type"].startswith("string_too"):
        msg += f" (got {len(error['input'])})"
    return msg


def validate_event(kind: str, **fields: Any) -> Event:
    """Build a validated event of ``kind`` ("lead", "sale" or "customer").

    Raises :class:`InvalidEventError` naming each bad field and its limit; ``None`` values are
    treated as unset.

    Example:
        >>> validate_event("lead", click_id="c1", event_name="Sign up",
        ...                customer_external_id="u_1").event_name
        'Sign up'
    """
    model = _MODELS[kind]
    values = {key: value for key, value in fields.items() if value is not None}
    try:
        return model(**values)
    except ValidationError as exc:
        errors = [
            (".".join(str(part) for part in err["loc"]) or kind, _reason(err))
            for err in exc.errors()
        ]
        raise InvalidEventError(kind, errors) from None
