"""What Dub sends in a webhook: the envelope and the ``data`` of each trigger, typed.

Every trigger Dub sends (:data:`WEBHOOK_TRIGGERS`) has a model of its ``data``, read from Dub's
own schemas (``apps/web/lib/webhook/schemas.ts`` and ``lib/zod/schemas/*``), with Dub's field
names (camelCase, as in :class:`~asgi_attribution.PartnerData`). Dub adds fields without
notice, and a webhook must never be refused for one, so every model keeps unknown fields
(``extra="allow"``) and every field is optional: nothing in this package relies on a field of
``data``. A ``data`` whose known field has a type these models do not expect (Dub changed it) is
kept untyped, as is the ``data`` of a trigger this module does not know: the event still
reaches its handler.

Example:
    >>> event = parse_event({"id": "evt_1", "event": "partner.enrolled",
    ...                      "createdAt": "2025-01-14T04:49:30.459Z",
    ...                      "data": {"id": "pn_1", "name": "Ada", "status": "approved"}})
    >>> type(event.data).__name__, event.data.status
    ('PartnerEnrolledData', 'approved')
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "WEBHOOK_TRIGGERS",
    "BountyData",
    "CommissionCreatedData",
    "DiscountCodeData",
    "LeadCreatedData",
    "LinkClickedData",
    "LinkData",
    "PartnerApplicationData",
    "PartnerEnrolledData",
    "PartnerMergedData",
    "PayoutConfirmedData",
    "SaleCreatedData",
    "WebhookApplicationAnswer",
    "WebhookClick",
    "WebhookCustomer",
    "WebhookData",
    "WebhookDiscount",
    "WebhookEvent",
    "WebhookLink",
    "WebhookPartner",
    "WebhookPartnerLink",
    "WebhookSale",
    "data_model_for",
    "parse_event",
]

logger = logging.getLogger("asgi_attribution")

_ALLOW = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

# Dub's amounts are integer cents; an integer-valued float (1e3) still fits, a fraction does not.
Cents = int
Date = datetime.datetime


class WebhookData(BaseModel):
    """The ``data`` of an event, untyped: a trigger this module does not know, or a ``data``
    that breaks its typed model. Every field the provider sent is kept.

    Example:
        >>> WebhookData.model_validate({"id": "x_1", "name": "Ada"}).model_extra
        {'id': 'x_1', 'name': 'Ada'}
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
    stripeCustomerId: str | None = None
    sales: int | None = None
    saleAmount: Cents | None = None
    createdAt: Date | None = None
    firstSaleAt: Date | None = None


class WebhookClick(BaseModel):
    """The click behind a lead, a sale or a ``link.clicked``.

    Example:
        >>> WebhookClick(id="GWGrkftJdYlZD2mq", country="US").id
        'GWGrkftJdYlZD2mq'
    """

    model_config = _ALLOW
    id: str | None = None
    timestamp: Date | None = None
    url: str | None = None
    country: str | None = None
    city: str | None = None
    region: str | None = None
    continent: str | None = None
    device: str | None = None
    browser: str | None = None
    os: str | None = None
    ua: str | None = None
    referer: str | None = None
    refererUrl: str | None = None
    qr: bool | None = None
    ip: str | None = None


class WebhookLink(BaseModel):
    """A short link: the ``link`` of a lead, sale, click or commission (partner links name the
    partner), and the whole ``data`` of ``link.created|updated|deleted`` (:class:`LinkData`).

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
    externalId: str | None = None
    tenantId: str | None = None
    partnerId: str | None = None
    programId: str | None = None
    workspaceId: str | None = None
    folderId: str | None = None
    trackConversion: bool | None = None
    archived: bool | None = None
    title: str | None = None
    description: str | None = None
    image: str | None = None
    tags: list[Any] | None = None
    clicks: int | None = None
    leads: int | None = None
    sales: int | None = None
    saleAmount: Cents | None = None
    createdAt: Date | None = None
    updatedAt: Date | None = None
    lastClicked: Date | None = None
    expiresAt: Date | None = None
    disabledAt: Date | None = None


class WebhookSale(BaseModel):
    """The sale of a ``sale.created`` event (``amount`` in cents of ``currency``).

    Example:
        >>> WebhookSale(amount=4900, currency="usd", invoiceId="in_1").invoiceId
        'in_1'
    """

    model_config = _ALLOW
    amount: Cents | None = None
    currency: str | None = None
    paymentProcessor: str | None = None
    invoiceId: str | None = None


class WebhookPartner(BaseModel):
    """A partner, as Dub shows one: on a lead, sale, commission or payout, an application, a
    merge (``id``, ``tenantId``, ``email`` only). ``tenantId`` is your own id of the partner;
    the ``total*`` fields are the partner's running totals (amounts in cents).

    Example:
        >>> WebhookPartner(id="pn_1", name="Ada", totalSales=3).totalSales
        3
    """

    model_config = _ALLOW
    id: str | None = None
    name: str | None = None
    email: str | None = None
    image: str | None = None
    country: str | None = None
    tenantId: str | None = None
    groupId: str | None = None
    status: str | None = None
    companyName: str | None = None
    description: str | None = None
    payoutsEnabledAt: Date | None = None
    totalClicks: int | None = None
    totalLeads: int | None = None
    totalConversions: int | None = None
    totalSales: int | None = None
    totalSaleAmount: Cents | None = None
    totalCommissions: Cents | None = None


class WebhookPartnerLink(BaseModel):
    """One of an enrolled partner's referral links, with its totals.

    Example:
        >>> WebhookPartnerLink(key="john", clicks=100, sales=3).sales
        3
    """

    model_config = _ALLOW
    id: str | None = None
    domain: str | None = None
    key: str | None = None
    shortLink: str | None = None
    url: str | None = None
    clicks: int | None = None
    leads: int | None = None
    conversions: int | None = None
    sales: int | None = None
    saleAmount: Cents | None = None


class WebhookDiscount(BaseModel):
    """The discount a discount code gives (``type``: ``percentage`` or ``flat``, in cents).

    Example:
        >>> WebhookDiscount(amount=10, type="percentage", maxDuration=6).maxDuration
        6
    """

    model_config = _ALLOW
    id: str | None = None
    amount: int | float | None = None
    type: str | None = None
    maxDuration: int | None = None
    provider: str | None = None


class WebhookApplicationAnswer(BaseModel):
    """One answer of a partner's application form.

    Example:
        >>> WebhookApplicationAnswer(label="Website", value=None).label
        'Website'
    """

    model_config = _ALLOW
    label: str | None = None
    value: str | None = None


class LinkData(WebhookLink, WebhookData):
    """The ``data`` of ``link.created``, ``link.updated`` and ``link.deleted``: the link.

    Example:
        >>> LinkData(id="link_1", shortLink="https://go.acme.com/john").shortLink
        'https://go.acme.com/john'
    """


class LinkClickedData(WebhookData):
    """The ``data`` of ``link.clicked``: the click and its link.

    Example:
        >>> LinkClickedData(click={"id": "c1"}, link={"key": "john"}).link.key
        'john'
    """

    click: WebhookClick | None = None
    link: WebhookLink | None = None


class LeadCreatedData(WebhookData):
    """The ``data`` of ``lead.created``: event name, customer, click, link and, for a partner
    link, the ``partner``.

    Example:
        >>> LeadCreatedData(eventName="Sign up", customer={"externalId": "u_1"}).customer.externalId
        'u_1'
    """

    eventName: str | None = None
    customer: WebhookCustomer | None = None
    click: WebhookClick | None = None
    link: WebhookLink | None = None
    partner: WebhookPartner | None = None
    metadata: dict[str, Any] | None = None


class SaleCreatedData(LeadCreatedData):
    """The ``data`` of ``sale.created``: as a lead, plus the ``sale`` (amount, invoice id).

    Example:
        >>> SaleCreatedData(sale={"amount": 100, "currency": "usd"},
        ...                 partner={"id": "pn_1"}).partner.id
        'pn_1'
    """

    sale: WebhookSale | None = None


class CommissionCreatedData(WebhookData):
    """The ``data`` of ``commission.created``: what a partner earned (``earnings``, in cents;
    negative for a clawback).

    ``status`` is ``pending`` at first (then ``processed``, ``paid``, ``refunded``...);
    ``invoiceId`` ties it to the sale, which is how a refund finds it. ``customer`` and ``link``
    are ``None`` for a click or custom commission.

    Example:
        >>> CommissionCreatedData(id="cm_1", type="sale", amount=5000, earnings=1000).earnings
        1000
    """

    id: str | None = None
    type: str | None = None
    amount: Cents | None = None
    earnings: Cents | None = None
    currency: str | None = None
    status: str | None = None
    invoiceId: str | None = None
    description: str | None = None
    quantity: int | None = None
    userId: str | None = None
    createdAt: Date | None = None
    updatedAt: Date | None = None
    partner: WebhookPartner | None = None
    customer: WebhookCustomer | None = None
    link: WebhookLink | None = None


class PartnerEnrolledData(WebhookPartner, WebhookData):
    """The ``data`` of ``partner.enrolled``: the partner (approved, invited or added by the
    API), with their enrollment (``programId``, ``tenantId``, ``status``) and ``links``.

    Example:
        >>> PartnerEnrolledData(id="pn_1", links=[{"key": "ada"}]).links[0].key
        'ada'
    """

    username: str | None = None
    programId: str | None = None
    partnerId: str | None = None
    applicationId: str | None = None
    createdAt: Date | None = None
    links: list[WebhookPartnerLink] | None = None
    discountId: str | None = None
    clickRewardId: str | None = None
    leadRewardId: str | None = None
    saleRewardId: str | None = None


class PartnerApplicationData(WebhookData):
    """The ``data`` of ``partner.application_submitted``: the application, its ``partner`` and
    the answers of its form.

    Example:
        >>> PartnerApplicationData(id="pga_1", partner={"id": "pn_1", "status": "pending"}
        ...                        ).partner.status
        'pending'
    """

    id: str | None = None
    createdAt: Date | None = None
    partner: WebhookPartner | None = None
    applicationFormData: list[WebhookApplicationAnswer] | None = None


class PartnerMergedData(WebhookData):
    """The ``data`` of ``partner.merged``: ``sourcePartner`` was merged into ``targetPartner``
    (use the target's id from now on); sent once per program the source was enrolled in.

    Example:
        >>> PartnerMergedData(sourcePartner={"id": "pn_1"}, targetPartner={"id": "pn_2"},
        ...                   targetAlreadyEnrolled=False).targetPartner.id
        'pn_2'
    """

    sourcePartner: WebhookPartner | None = None
    targetPartner: WebhookPartner | None = None
    targetAlreadyEnrolled: bool | None = None


class BountyData(WebhookData):
    """The ``data`` of ``bounty.created`` and ``bounty.updated``: the bounty
    (``rewardAmount`` in cents).

    Example:
        >>> BountyData(id="bnty_1", type="submission", rewardAmount=50000).rewardAmount
        50000
    """

    id: str | None = None
    name: str | None = None
    description: str | None = None
    type: str | None = None
    startsAt: Date | None = None
    endsAt: Date | None = None
    startMode: str | None = None
    endsAfterDays: int | None = None
    submissionsOpenAt: Date | None = None
    submissionFrequency: str | None = None
    maxSubmissions: int | None = None
    rewardAmount: Cents | None = None
    rewardDescription: str | None = None
    performanceScope: str | None = None
    performanceCondition: dict[str, Any] | None = None
    submissionRequirements: dict[str, Any] | None = None
    groups: list[dict[str, Any]] | None = None
    partnerTags: list[dict[str, Any]] | None = None


class PayoutConfirmedData(WebhookData):
    """The ``data`` of ``payout.confirmed``: the payout (``amount`` in cents) and its partner.

    Example:
        >>> PayoutConfirmedData(id="po_1", amount=5000, partner={"tenantId": "t_1"}
        ...                     ).partner.tenantId
        't_1'
    """

    id: str | None = None
    invoiceId: str | None = None
    amount: Cents | None = None
    currency: str | None = None
    status: str | None = None
    mode: str | None = None
    method: str | None = None
    description: str | None = None
    periodStart: Date | None = None
    periodEnd: Date | None = None
    createdAt: Date | None = None
    updatedAt: Date | None = None
    initiatedAt: Date | None = None
    paidAt: Date | None = None
    traceId: str | None = None
    partner: WebhookPartner | None = None


class DiscountCodeData(WebhookData):
    """The ``data`` of ``discount_code.created`` and ``discount_code.deleted``: the code, its
    partner and link, and the ``discount`` it gives.

    Example:
        >>> DiscountCodeData(code="ADA10", discount={"amount": 10, "type": "percentage"}
        ...                  ).discount.amount
        10
    """

    id: str | None = None
    code: str | None = None
    partnerId: str | None = None
    linkId: str | None = None
    disabledAt: Date | None = None
    discount: WebhookDiscount | None = None


_DATA_MODELS: dict[str, type[WebhookData]] = {
    "link.created": LinkData,
    "link.updated": LinkData,
    "link.deleted": LinkData,
    "link.clicked": LinkClickedData,
    "lead.created": LeadCreatedData,
    "sale.created": SaleCreatedData,
    "partner.application_submitted": PartnerApplicationData,
    "partner.enrolled": PartnerEnrolledData,
    "partner.merged": PartnerMergedData,
    "commission.created": CommissionCreatedData,
    "bounty.created": BountyData,
    "bounty.updated": BountyData,
    "payout.confirmed": PayoutConfirmedData,
    "discount_code.created": DiscountCodeData,
    "discount_code.deleted": DiscountCodeData,
}

#: Every trigger Dub sends (its ``WEBHOOK_TRIGGERS``), each with a typed ``data`` here.
WEBHOOK_TRIGGERS = tuple(_DATA_MODELS)


def data_model_for(event: str) -> type[WebhookData]:
    """The model of ``data`` for an event type: a typed one, or :class:`WebhookData`.

    Example:
        >>> data_model_for("link.clicked").__name__, data_model_for("x.happened").__name__
        ('LinkClickedData', 'WebhookData')
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
