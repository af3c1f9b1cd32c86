"""The request bodies the fake accepts, validated as the providers' zod schemas do.

Every limit comes from :mod:`asgi_attribution._limits`, measured the way the provider measures it
(JavaScript lengths), and each provider's vocabulary (lead modes, payment processors, whether an
empty click id is allowed) from its :class:`~asgi_attribution.Provider`, so what the fake refuses
is what our own event models and dialects refuse.

Example:
    >>> validate_body("dub", "lead", {"clickId": "c", "eventName": "Sign up"})
    Traceback (most recent call last):
    ...
    asgi_attribution.testing.fake_provider._bodies.BodyError: customerExternalId: Field required
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..._limits import (
    AVATAR_DATA_PATTERN,
    EMAIL_MAX_LENGTH,
    EMAIL_PATTERN,
    EVENT_NAME_MAX_LENGTH,
    EVENT_QUANTITY_RANGE,
    EXTERNAL_ID_MAX_LENGTH,
    MAX_SAFE_INTEGER,
    METADATA_MAX_LENGTH,
    NAME_MAX_LENGTH,
    js_length,
    json_js_length,
)
from ..._providers import DUB, PIMMS

__all__ = ["BodyError", "Kind", "ProviderName", "validate_body"]


ProviderName = Literal["dub", "pimms"]

#: What a tracking route receives: ``legacy_customer`` is Dub's ``POST /track/customer``.
Kind = Literal["lead", "sale", "customer", "legacy_customer"]

_EMAIL = re.compile(EMAIL_PATTERN)

# What JavaScript's `new URL()` needs at least: a scheme, then something without spaces.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s]+$")


class BodyError(ValueError):
    """A body the provider would refuse with 422; the message names each bad field.

    Example:
        >>> str(BodyError("amount: Input should be greater than or equal to 0"))
        'amount: Input should be greater than or equal to 0'
    """


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


def _check_url(value: str) -> str:
    if not _URL.match(value):
        raise ValueError("must be a URL")
    return value


def _trim(value: Any) -> Any:
    # zod's .trim() runs before .min(1): a whitespace-only id is empty, hence refused.
    return value.strip() if isinstance(value, str) else value


def _js_max(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if js_length(value) > limit:
            raise ValueError(f"must be at most {limit} characters (UTF-16 code units)")
        return value

    return check


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if json_js_length(value) > METADATA_MAX_LENGTH:
        raise ValueError(f"must be at most {METADATA_MAX_LENGTH} characters as JSON")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


_MIN_QUANTITY, _MAX_QUANTITY = EVENT_QUANTITY_RANGE

_Trimmed = BeforeValidator(_trim)

_Email = Annotated[str, AfterValidator(_js_max(EMAIL_MAX_LENGTH)), AfterValidator(_check_email)]

_Name = Annotated[str, AfterValidator(_js_max(NAME_MAX_LENGTH))]

_Url = Annotated[str, AfterValidator(_check_url)]


def _check_avatar(value: str) -> str:
    # The track routes' customerAvatar: a URL, or image data Dub's storage uploads.
    return value if value and re.fullmatch(AVATAR_DATA_PATTERN, value) else _check_url(value)


_Avatar = Annotated[str, AfterValidator(_check_avatar)]

_ExternalId = Annotated[
    str, _Trimmed, Field(min_length=1), AfterValidator(_js_max(EXTERNAL_ID_MAX_LENGTH))
]

_EventName = Annotated[
    str, _Trimmed, Field(min_length=1), AfterValidator(_js_max(EVENT_NAME_MAX_LENGTH))
]

_Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]

_Quantity = Annotated[int, Field(ge=_MIN_QUANTITY, le=_MAX_QUANTITY)]

_Amount = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]

# An empty click id is Dub's deferred flow; PIMMS refuses it (from each Provider's facts).
_DubClickId = Annotated[str, _Trimmed, Field(min_length=0 if DUB.empty_click_id else 1)]

_PimmsClickId = Annotated[str, _Trimmed, Field(min_length=0 if PIMMS.empty_click_id else 1)]


class _Body(BaseModel):
    # strict: JSON "100" is not an amount, as in the providers' zod schemas.
    model_config = ConfigDict(strict=True, extra="forbid")


class _CustomerFields(_Body):
    customerName: _Name | None = None
    customerEmail: _Email | None = None
    customerAvatar: _Avatar | None = None
    metadata: _Metadata | None = None


class _DubLead(_CustomerFields):
    clickId: _DubClickId
    eventName: _EventName
    customerExternalId: _ExternalId
    mode: Annotated[str, AfterValidator(_one_of(DUB.modes))] = "async"
    eventQuantity: _Quantity | None = None


class _PimmsLead(_CustomerFields):
    clickId: _PimmsClickId
    eventName: _EventName
    externalId: _ExternalId
    mode: Annotated[str, AfterValidator(_one_of(PIMMS.modes))] = "async"
    eventQuantity: _Quantity | None = None


class _SaleFields(_CustomerFields):
    amount: _Amount
    currency: str = "usd"
    eventName: Annotated[str, AfterValidator(_js_max(EVENT_NAME_MAX_LENGTH))] = "Purchase"
    invoiceId: str | None = None
    leadEventName: str | None = None
    clickId: Annotated[str, _Trimmed] | None = None


class _DubSale(_SaleFields):
    customerExternalId: _ExternalId
    paymentProcessor: Annotated[str, AfterValidator(_one_of(DUB.payment_processors))] = "custom"


class _PimmsSale(_SaleFields):
    externalId: _ExternalId
    paymentProcessor: Annotated[str, AfterValidator(_one_of(PIMMS.payment_processors))] = "custom"


class _LegacyCustomer(_Body):
    customerId: _ExternalId
    customerName: _Name | None = None
    customerEmail: _Email | None = None
    customerAvatar: _Url | None = None


class _PimmsCustomerUpdate(_Body):
    email: _Email | None = None
    name: str | None = None
    avatar: _Url | None = None
    externalId: _ExternalId | None = None


class _DubCustomerUpdate(_PimmsCustomerUpdate):
    stripeCustomerId: str | None = None
    country: str | None = None


_MODELS: dict[tuple[ProviderName, Kind], type[_Body]] = {
    ("dub", "lead"): _DubLead,
    ("dub", "sale"): _DubSale,
    ("dub", "customer"): _DubCustomerUpdate,
    ("dub", "legacy_customer"): _LegacyCustomer,
    ("pimms", "lead"): _PimmsLead,
    ("pimms", "sale"): _PimmsSale,
    ("pimms", "customer"): _PimmsCustomerUpdate,
}


def validate_body(
    provider: ProviderName, kind: Kind, data: Any, *, strict: bool = True
) -> dict[str, Any]:
    """The validated fields of a ``kind`` body for ``provider``, defaults filled in.

    With ``strict=False`` unknown keys are dropped instead of refused. Raises
    :class:`BodyError` naming each bad field.

    Example:
        >>> body = {"clickId": "c", "eventName": "Sign up", "externalId": "u1", "x": 1}
        >>> validate_body("pimms", "lead", body, strict=False)["mode"]
        'async'
    """
    model = _MODELS[(provider, kind)]
    if not strict and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in model.model_fields}
    try:
        return model.model_validate(data).model_dump()
    except ValidationError as exc:
        raise BodyError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """One line naming each bad field and why, as the fake's 422 bodies say it.

    Example:
        >>> from pydantic import TypeAdapter, ValidationError
        >>> try:
        ...     TypeAdapter(int).validate_python("x")
        ... except ValidationError as exc:
        ...     validation_message(exc)
        'body: Input should be a valid integer, unable to parse string as an integer'
    """
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "body"
        # Our own validators' messages come as "Value error, <reason>"; keep just the reason.
        parts.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
