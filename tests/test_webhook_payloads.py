"""Every trigger Dub sends, posted over a real socket by the fake provider, parses to its model.

The payloads are shaped as Dub sends them: the fields of Dub's own schemas
(``apps/web/lib/webhook/schemas.ts``, ``lib/zod/schemas/*``, dubinc/dub 1de955f) and of its
sample events, with values of our own, plus a field Dub may add one day.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

import pytest

from asgi_attribution.testing import FakeProvider, serve_in_thread, sign_webhook
from asgi_attribution.webhooks import (
    WEBHOOK_TRIGGERS,
    BountyData,
    CommissionCreatedData,
    DiscountCodeData,
    LeadCreatedData,
    LinkClickedData,
    LinkData,
    PartnerApplicationData,
    PartnerEnrolledData,
    PartnerMergedData,
    PayoutConfirmedData,
    SaleCreatedData,
    WebhookData,
    WebhookEvent,
    WebhookPartner,
    WebhookVerifier,
    webhook_endpoint,
)

pytestmark = pytest.mark.anyio

SECRET = "whsec_payloads"

# linkEventSchema: the whole link, as link.* and the link of a click, lead or sale carry it.
LINK = {
    "id": "link_7Fq2",
    "domain": "go.acme.com",
    "key": "ada",
    "url": "https://acme.com/pricing",
    "trackConversion": True,
    "externalId": None,
    "tenantId": "t_ada",
    "programId": "prog_9",
    "partnerId": "pn_ada",
    "archived": False,
    "expiresAt": None,
    "expiredUrl": None,
    "disabledAt": None,
    "password": None,
    "proxy": False,
    "title": "Acme pricing",
    "description": None,
    "image": None,
    "video": None,
    "rewrite": False,
    "doIndex": False,
    "ios": None,
    "android": None,
    "geo": None,
    "publicStats": False,
    "folderId": None,
    "tagId": None,
    "tags": [],
    "webhookIds": [],
    "comments": None,
    "shortLink": "https://go.acme.com/ada",
    "qrCode": "https://api.dub.co/qr?url=https://go.acme.com/ada?qr=1",
    "utm_source": None,
    "utm_medium": None,
    "utm_campaign": None,
    "utm_term": None,
    "utm_content": None,
    "userId": "usr_1",
    "workspaceId": "ws_acme",
    "clicks": 12,
    "lastClicked": "2025-03-01T10:00:00.000Z",
    "leads": 4,
    "sales": 2,
    "saleAmount": 9800,
    "createdAt": "2025-02-01T09:00:00.000Z",
    "updatedAt": "2025-03-01T10:00:00.000Z",
    "projectId": "acme",
    "testVariants": None,
    "testCompletedAt": None,
    "testStartedAt": None,
}

# clickEventSchema
CLICK = {
    "id": "Qm4xZ8pL0aTr2nWc",
    "timestamp": "2025-03-01T10:00:00.000Z",
    "url": "https://acme.com/pricing",
    "country": "FR",
    "city": "Lyon",
    "region": "ARA",
    "continent": "EU",
    "device": "Mobile",
    "browser": "Safari",
    "os": "iOS",
    "ua": "Mozilla/5.0 (iPhone)",
    "referer": "news.example",
    "refererUrl": "https://news.example/post",
    "qr": False,
    "ip": "203.0.113.7",
}

# CustomerSchema, as a lead or sale carries it.
CUSTOMER = {
    "id": "cus_8d1",
    "externalId": "user_42",
    "name": "Ada L.",
    "email": "ada@example.com",
    "avatar": None,
    "createdAt": "2025-03-01T10:01:00.000Z",
}

# WebhookPartnerSchema: the partner of a lead, sale or commission.
PARTNER = {
    "id": "pn_ada",
    "name": "Ada L.",
    "email": "ada@partners.example",
    "image": None,
    "payoutsEnabledAt": None,
    "country": "FR",
    "groupId": "grp_1",
    "totalClicks": 12,
    "totalLeads": 4,
    "totalConversions": 2,
    "totalSales": 2,
    "totalSaleAmount": 9800,
    "totalCommissions": 1960,
}

BOUNTY = {
    "id": "bnty_1",
    "name": "Write about Acme",
    "description": "A post about Acme",
    "type": "submission",
    "startsAt": "2025-03-01T00:00:00.000Z",
    "endsAt": None,
    "startMode": "absolute",
    "endsAfterDays": None,
    "submissionsOpenAt": None,
    "submissionFrequency": None,
    "maxSubmissions": 1,
    "rewardAmount": 20000,
    "rewardDescription": None,
    "submissionRequirements": {"url": {}},
    "performanceCondition": None,
    "performanceScope": None,
    "groups": [{"id": "grp_1"}],
    "partnerTags": [],
}

DISCOUNT_CODE = {
    "id": "dcode_1",
    "code": "ADA10",
    "partnerId": "pn_ada",
    "linkId": "link_7Fq2",
    "disabledAt": None,
    "discount": {
        "id": "disc_1",
        "amount": 10,
        "type": "percentage",
        "maxDuration": 6,
        "provider": "custom",
    },
}

LEAD = {
    "eventName": "Sign up",
    "customer": CUSTOMER,
    "click": CLICK,
    "link": LINK,
    "partner": PARTNER,
    "metadata": {"plan": "trial"},
}

# One payload per trigger Dub sends, and the model its data must parse to.
PAYLOADS: dict[str, tuple[dict[str, Any], type[WebhookData]]] = {
    "link.created": (LINK, LinkData),
    "link.updated": ({**LINK, "title": "Acme plans"}, LinkData),
    "link.deleted": (LINK, LinkData),
    "link.clicked": ({"click": CLICK, "link": LINK}, LinkClickedData),
    "lead.created": (LEAD, LeadCreatedData),
    "sale.created": (
        {
            **LEAD,
            "eventName": "Subscription",
            "metadata": None,
            "sale": {
                "amount": 4900,
                "currency": "eur",
                "paymentProcessor": "stripe",
                "invoiceId": "in_42",
            },
        },
        SaleCreatedData,
    ),
    "partner.application_submitted": (
        {
            "id": "pga_1",
            "createdAt": "2025-03-02T08:00:00.000Z",
            "partner": {
                "id": "pn_ada",
                "name": "Ada L.",
                "email": "ada@partners.example",
                "companyName": None,
                "image": None,
                "description": "I write about tools.",
                "country": "FR",
                "groupId": "grp_1",
                "status": "pending",
                "website": "https://ada.example",
                "youtube": None,
                "twitter": None,
                "linkedin": None,
                "instagram": None,
                "tiktok": None,
            },
            "applicationFormData": [
                {"label": "Website", "value": "https://ada.example"},
                {"label": "Anything else?", "value": None},
            ],
        },
        PartnerApplicationData,
    ),
    "partner.enrolled": (
        {
            "id": "pn_ada",
            "name": "Ada L.",
            "username": "ada",
            "email": "ada@partners.example",
            "image": None,
            "country": "FR",
            "companyName": None,
            "description": None,
            "networkStatus": "draft",
            "tenantId": "t_ada",
            "programId": "prog_9",
            "partnerId": "pn_ada",
            "groupId": "grp_1",
            "status": "approved",
            "defaultPayoutMethod": None,
            "paypalEmail": None,
            "stripeConnectId": None,
            "payoutsEnabledAt": None,
            "identityVerifiedAt": None,
            "trustedAt": None,
            "createdAt": "2025-03-02T09:00:00.000Z",
            "applicationId": "pga_1",
            "website": "https://ada.example",
            "totalCommissions": 0,
            "clickRewardId": None,
            "leadRewardId": None,
            "saleRewardId": "rw_1",
            "referralRewardId": None,
            "discountId": "disc_1",
            "bannedAt": None,
            "bannedReason": None,
            "totalClicks": 0,
            "totalLeads": 0,
            "totalConversions": 0,
            "totalSales": 0,
            "totalSaleAmount": 0,
            "netRevenue": 0,
            "earningsPerClick": None,
            "averageLifetimeValue": None,
            "clickToLeadRate": None,
            "clickToConversionRate": None,
            "leadToConversionRate": None,
            "returnOnAdSpend": None,
            "links": [
                {
                    "id": "link_7Fq2",
                    "domain": "go.acme.com",
                    "key": "ada",
                    "shortLink": "https://go.acme.com/ada",
                    "url": "https://acme.com",
                    "clicks": 0,
                    "leads": 0,
                    "conversions": 0,
                    "sales": 0,
                    "saleAmount": 0,
                }
            ],
        },
        PartnerEnrolledData,
    ),
    "partner.merged": (
        {
            "sourcePartner": {"id": "pn_old", "tenantId": "t_ada", "email": "old@example.com"},
            "targetPartner": {"id": "pn_ada", "tenantId": "t_ada", "email": "ada@example.com"},
            "targetAlreadyEnrolled": True,
        },
        PartnerMergedData,
    ),
    "commission.created": (
        {
            "id": "cm_1",
            "type": "sale",
            "amount": 4900,
            "earnings": 980,
            "currency": "usd",
            "status": "pending",
            "invoiceId": "in_42",
            "description": None,
            "quantity": 1,
            "userId": None,
            "createdAt": "2025-03-03T10:00:00.000Z",
            "updatedAt": "2025-03-03T10:00:00.000Z",
            "partner": PARTNER,
            "customer": {**CUSTOMER, "country": "FR", "sales": 1, "saleAmount": 4900},
            "link": {key: LINK[key] for key in ("id", "shortLink", "domain", "key")},
        },
        CommissionCreatedData,
    ),
    "bounty.created": (BOUNTY, BountyData),
    "bounty.updated": ({**BOUNTY, "rewardAmount": 30000}, BountyData),
    "payout.confirmed": (
        {
            "id": "po_1",
            "invoiceId": "inv_1",
            "amount": 1960,
            "currency": "USD",
            "status": "completed",
            "method": None,
            "description": "Acme partner payout",
            "periodStart": "2025-03-01T00:00:00.000Z",
            "periodEnd": "2025-03-31T23:59:59.999Z",
            "createdAt": "2025-04-01T08:00:00.000Z",
            "initiatedAt": "2025-04-01T08:00:00.000Z",
            "paidAt": None,
            "mode": "external",
            "partner": {
                "id": "pn_ada",
                "name": "Ada L.",
                "email": "ada@partners.example",
                "image": None,
                "country": "FR",
                "tenantId": "t_ada",
                "status": "approved",
            },
        },
        PayoutConfirmedData,
    ),
    "discount_code.created": (DISCOUNT_CODE, DiscountCodeData),
    "discount_code.deleted": (DISCOUNT_CODE, DiscountCodeData),
}


class Seen:
    def __init__(self) -> None:
        self.events: dict[str, WebhookEvent] = {}
        self.lock = threading.Lock()

    def add(self, event: WebhookEvent) -> None:
        with self.lock:
            self.events[event.event] = event


def test_every_trigger_dub_sends_has_a_payload_here() -> None:
    assert set(PAYLOADS) == set(WEBHOOK_TRIGGERS)
    assert len(WEBHOOK_TRIGGERS) == 15


async def test_every_trigger_parses_to_its_model_over_a_real_socket() -> None:
    seen = Seen()
    handlers = dict.fromkeys(WEBHOOK_TRIGGERS, seen.add)
    endpoint = webhook_endpoint(WebhookVerifier(secrets=SECRET), handlers)
    fake = FakeProvider("dub", webhook_secret=SECRET)
    with serve_in_thread(endpoint) as url:
        for trigger, (data, _) in PAYLOADS.items():
            # A field Dub may add one day must not cost the event its types.
            sent = await fake.send_webhook(f"{url}/", trigger, {**data, "addedLater": [1]})
            assert sent.status == 200, (trigger, sent.status)
    assert set(seen.events) == set(PAYLOADS)
    for trigger, (data, model) in PAYLOADS.items():
        parsed = seen.events[trigger].data
        assert type(parsed) is model, trigger
        assert parsed.model_extra is not None and parsed.model_extra["addedLater"] == [1]
        # Nothing Dub sent is lost: every key comes back, typed or kept as it was.
        dumped = parsed.model_dump(mode="json", exclude_unset=True)
        assert set(dumped) == {*data, "addedLater"}, trigger


async def test_typed_fields_read_as_dub_means_them() -> None:
    seen = Seen()
    endpoint = webhook_endpoint(
        WebhookVerifier(secrets=SECRET), dict.fromkeys(WEBHOOK_TRIGGERS, seen.add)
    )
    fake = FakeProvider("dub", webhook_secret=SECRET)
    with serve_in_thread(endpoint) as url:
        for trigger, (data, _) in PAYLOADS.items():
            assert (await fake.send_webhook(f"{url}/", trigger, data)).status == 200
    events = {name: event.data for name, event in seen.events.items()}

    sale = events["sale.created"]
    assert isinstance(sale, SaleCreatedData)
    # The partner of a lead or sale is typed: who to credit, and your own id of them.
    assert isinstance(sale.partner, WebhookPartner)
    assert sale.partner.id == "pn_ada" and sale.partner.totalCommissions == 1960
    assert sale.sale is not None and (sale.sale.amount, sale.sale.invoiceId) == (4900, "in_42")
    assert sale.link is not None and sale.link.tenantId == "t_ada"
    lead = events["lead.created"]
    assert isinstance(lead, LeadCreatedData) and lead.partner is not None
    assert lead.metadata == {"plan": "trial"} and lead.click is not None
    assert lead.click.timestamp == datetime.datetime(2025, 3, 1, 10, tzinfo=datetime.timezone.utc)

    clicked = events["link.clicked"]
    assert isinstance(clicked, LinkClickedData) and clicked.click is not None
    assert clicked.click.country == "FR" and clicked.link is not None
    link = events["link.updated"]
    assert isinstance(link, LinkData) and link.title == "Acme plans" and link.leads == 4

    enrolled = events["partner.enrolled"]
    assert isinstance(enrolled, PartnerEnrolledData)
    assert (enrolled.tenantId, enrolled.status, enrolled.programId) == (
        "t_ada",
        "approved",
        "prog_9",
    )
    assert enrolled.links is not None and enrolled.links[0].shortLink == "https://go.acme.com/ada"
    applied = events["partner.application_submitted"]
    assert isinstance(applied, PartnerApplicationData) and applied.partner is not None
    assert applied.partner.status == "pending" and applied.applicationFormData is not None
    assert [a.value for a in applied.applicationFormData] == ["https://ada.example", None]
    merged = events["partner.merged"]
    assert isinstance(merged, PartnerMergedData) and merged.targetPartner is not None
    assert merged.sourcePartner is not None and merged.sourcePartner.id == "pn_old"
    assert merged.targetPartner.id == "pn_ada" and merged.targetAlreadyEnrolled is True

    commission = events["commission.created"]
    assert isinstance(commission, CommissionCreatedData) and commission.partner is not None
    assert (commission.earnings, commission.invoiceId) == (980, "in_42")
    assert commission.customer is not None and commission.customer.saleAmount == 4900
    bounty = events["bounty.updated"]
    assert isinstance(bounty, BountyData) and bounty.rewardAmount == 30000
    assert bounty.groups == [{"id": "grp_1"}]
    payout = events["payout.confirmed"]
    assert isinstance(payout, PayoutConfirmedData) and payout.partner is not None
    assert payout.partner.tenantId == "t_ada" and payout.amount == 1960
    assert payout.periodEnd is not None and payout.periodEnd.month == 3
    code = events["discount_code.deleted"]
    assert isinstance(code, DiscountCodeData) and code.discount is not None
    assert (code.code, code.discount.type, code.discount.maxDuration) == ("ADA10", "percentage", 6)


async def test_a_commission_without_customer_or_link_is_typed() -> None:
    # A click or custom commission: Dub sends customer and link as null.
    data = {**PAYLOADS["commission.created"][0], "customer": None, "link": None}
    event = WebhookVerifier(secrets=SECRET).verify_body(
        *sign_webhook({"event": "commission.created", "data": data}, SECRET)
    )
    assert isinstance(event.data, CommissionCreatedData)
    assert event.data.customer is None and event.data.link is None


async def test_an_unknown_trigger_parses_untyped_and_reaches_its_handler() -> None:
    seen = Seen()
    endpoint = webhook_endpoint(WebhookVerifier(secrets=SECRET), {"referral.created": seen.add})
    fake = FakeProvider("dub", webhook_secret=SECRET)
    with serve_in_thread(endpoint) as url:
        sent = await fake.send_webhook(f"{url}/", "referral.created", {"id": "ref_1", "n": 2})
    assert sent.status == 200
    data = seen.events["referral.created"].data
    assert type(data) is WebhookData and data.model_extra == {"id": "ref_1", "n": 2}


def test_a_known_field_of_another_type_keeps_the_event_untyped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {**PAYLOADS["payout.confirmed"][0], "amount": "fifty"}
    event = WebhookVerifier(secrets=SECRET).verify_body(
        *sign_webhook({"event": "payout.confirmed", "data": data}, SECRET)
    )
    assert type(event.data) is WebhookData and event.data.model_extra == data
    assert "does not match PayoutConfirmedData, kept untyped" in caplog.text
