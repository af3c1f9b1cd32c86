"""The webhook payloads Dub and PIMMS post: an envelope and typed ``data`` for the common events.

Field names are the providers' own (camelCase), as in :class:`~asgi_attribution.PartnerData`.
Every model keeps unknown fields (``extra="allow"``): the providers add fields without notice,
and a webhook must never be refused because of one.

Example:
    >>> event = parse_event({"id": "evt_1", "event": "sale.created",
    ...                      "createdAt": "2025-01-14T04:49:30.459Z",
    ...                      "data": {"sale": {"amount": 100, "currency": "usd"}}})
    >>> type(event.data).__name__, event.data.sale.amount
    ('SaleCreatedData', 100)
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "CommissionCreatedData",
    "LeadCreatedData",
    "SaleCreatedData",
    "WebhookClick",
    "WebhookCustomer",
    "WebhookData",
    "WebhookEvent",
    "WebhookLink",
    "WebhookPartner",
    "WebhookSale",
    "data_model_for",
    "parse_event",
]

logger = logging.getLogger("asgi_attribution")

_ALLOW = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class WebhookData(BaseModel):
    """The ``data`` of an event without a typed model here (``partner.enrolled``, ``link.*``...).

    Every field the provider sent is kept: read them with ``data.model_extra`` or attributes.

    Example:
        >>> WebhookData.model_validate({"id": "pn_1", "name": "Ada"}).model_extra
        {'id': 'pn_1', 'name': 'Ada'}
    """

    model_config = _ALLOW


class WebhookCustomer(BaseModel):
    """The customer of a lead, sale or commission (``externalId`` is your own user id).

    Example:
        >>> WebhookCustomer(externalId="user_42").externalId
        'user_42'
    """

    model_config = _ALLOW
    id: str | None = None
    externalId: str | None = None
    name: str | None = None
    email: str | None = None
    avatar: str | None = None
    country: str | None = None


class WebhookClick(BaseModel):
    """The click behind a lead or sale.

    Example:
        >>> WebhookClick(id="GWGrkftJdYlZD2mq", country="US").id
        'GWGrkftJdYlZD2mq'
    """

    model_config = _ALLOW
    id: str | None = None
    url: str | None = None
    country: str | None = None
    referer: str | None = None


class WebhookLink(BaseModel):
    """The short link a lead, sale or commission came through (partner links name the partner).

    Example:
        >>> WebhookLink(domain="go.acme.com", key="john", partnerId="pn_1").partnerId
        'pn_1'
    """

    model_config = _ALLOW
    id: str | None = None
    domain: str | None = None
    key: str | None = None
    url: str | None = None
    shortLink: str | None = None
    partnerId: str | None = None
    programId: str | None = None
    tenantId: str | None = None


class WebhookSale(BaseModel):
    """The sale of a ``sale.created`` event (``amount`` in cents of ``currency``).

    Example:
        >>> WebhookSale(amount=4900, currency="usd", invoiceId="in_1").invoiceId
        'in_1'
    """

    model_config = _ALLOW
    amount: int | None = None
    currency: str | None = None
    paymentProcessor: str | None = None
    invoiceId: str | None = None


class WebhookPartner(BaseModel):
    """The partner a commission is for.

    Example:
        >>> WebhookPartner(id="pn_1", name="Ada").name
        'Ada'
    """

    model_config = _ALLOW
    id: str | None = None
    name: str | None = None
    email: str | None = None
    image: str | None = None
    country: str | None = None


class LeadCreatedData(WebhookData):
    """The ``data`` of ``lead.created``: event name, customer, click and link.

    Example:
        >>> LeadCreatedData(eventName="Sign up", customer={"externalId": "u_1"}).customer.externalId
        'u_1'
    """

    eventName: str | None = None
    customer: WebhookCustomer | None = None
    click: WebhookClick | None = None
    link: WebhookLink | None = None
    metadata: dict[str, Any] | None = None


class SaleCreatedData(WebhookData):
    """The ``data`` of ``sale.created``: as a lead, plus the ``sale`` (amount, invoice id).

    Example:
        >>> SaleCreatedData(sale={"amount": 100, "currency": "usd"}).sale.currency
        'usd'
    """

    eventName: str | None = None
    customer: WebhookCustomer | None = None
    click: WebhookClick | None = None
    link: WebhookLink | None = None
    sale: WebhookSale | None = None
    metadata: dict[str, Any] | None = None


class CommissionCreatedData(WebhookData):
    """The ``data`` of ``commission.created``: what a partner earned (``earnings``, in cents).

    ``status`` is ``pending`` at first (then ``processed``, ``paid``, ``refunded``...);
    ``invoiceId`` ties it to the sale, which is how a refund finds it.

    Example:
        >>> CommissionCreatedData(id="cm_1", type="sale", amount=5000, earnings=1000).earnings
        1000
    """

    id: str | None = None
    type: str | None = None
    amount: int | None = None
    earnings: int | None = None
    currency: str | None = None
    status: str | None = None
    invoiceId: str | None = None
    description: str | None = None
    quantity: int | None = None
    partner: WebhookPartner | None = None
    customer: WebhookCustomer | None = None
    link: WebhookLink | None = None


_DATA_MODELS: dict[str, type[WebhookData]] = {
    "lead.created": LeadCreatedData,
    "sale.created": SaleCreatedData,
    "commission.created": CommissionCreatedData,
}


def data_model_for(event: str) -> type[WebhookData]:
    """The model of ``data`` for an event type: a typed one, or :class:`WebhookData`.

    Example:
        >>> data_model_for("lead.created").__name__, data_model_for("link.clicked").__name__
        ('LeadCreatedData', 'WebhookData')
    """
    return _DATA_MODELS.get(event, WebhookData)


class WebhookEvent(BaseModel):
    """One verified webhook: ``id`` (``evt_...``, the same on every redelivery), ``event``,
    ``created_at`` (from ``createdAt``) and ``data`` (typed for the events this module knows).

    Example:
        >>> event = WebhookEvent(id="evt_1", event="link.clicked",
        ...                      created_at="2025-01-01T00:00:00Z", data={})
        >>> event.created_at.year, event.model_dump(by_alias=True)["createdAt"].year
        (2025, 2025)
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    id: str = Field(min_length=1)
    event: str = Field(min_length=1)
    created_at: datetime.datetime = Field(alias="createdAt")
    data: WebhookData


def parse_event(payload: Mapping[str, Any]) -> WebhookEvent:
    """Build a :class:`WebhookEvent` from a decoded body, typing ``data`` by ``event``.

    Raises ``pydantic.ValidationError`` when the envelope is wrong. A ``data`` that breaks its
    typed model (a provider changed a field) is kept untyped as :class:`WebhookData` and logged
    at warning: the event still reaches its handler.

    Example:
        >>> parse_event({"id": "evt_1", "event": "lead.created",
        ...              "createdAt": "2025-01-01T00:00:00Z",
        ...              "data": {"customer": "not an object"}}).data.model_extra
        {'customer': 'not an object'}
    """
    envelope = dict(payload)
    raw_data = envelope.get("data")
    if not isinstance(raw_data, Mapping):
        raw_data = {}
    envelope["data"] = WebhookData()
    event = WebhookEvent.model_validate(envelope)
    model = data_model_for(event.event)
    try:
        data = model.model_validate(raw_data)
    except ValidationError as exc:
        logger.warning(
            "webhook %s (%s): data does not match %s, kept untyped: %s",
            event.id[:64],
            event.event[:64],
            model.__name__,
            str(exc).splitlines()[0][:200],
        )
        data = WebhookData.model_validate(raw_data)
    return event.model_copy(update={"data": data})
