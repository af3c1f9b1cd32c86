"""What the fake does with a valid lead, sale, customer update or refund: the providers' server
logic, and the partner commissions that refunds act on.

Read from Dub's ``track-lead.ts`` / ``track-sale.ts`` and PIMMS' routes (a Dub fork):

- Lead (Dub): an empty ``clickId`` takes the known customer's click (else 400). Unless the mode
  is ``deferred``, the key (customer, event name lower-cased, spaces as ``-``) is reserved for a
  week *before* the click is looked up: a repeat answers 200 with ``"link": null`` and records
  nothing, and a 404 "click not found" keeps the key. A click whose link is in another
  workspace or disabled is 404 with Dub's message (its key kept too). PIMMS keeps the key
  forever, replaces only the first space, and its answer has no ``link``.
- With ``lead_delay``, as the providers record in the background: an ``async`` lead shows to
  sales only ``lead_delay`` seconds after its answer (Dub makes the customer at once; PIMMS
  makes even the customer in the background, so a sale before then is answered nulls and its
  invoice stays claimed); a ``wait`` lead shows at once (both cache it before answering).
- Sale (Dub): a cached answer for the ``invoiceId`` (kept a week, written after a record) is
  answered again; a known customer's link must be of the workspace and enabled (else 404), and
  the customer needs a lead (of ``leadEventName`` if given, else 404); no
  customer and no ``clickId`` answers nulls; a ``clickId`` creates the customer (direct sale
  tracking); ``amount <= 0`` answers nulls. PIMMS reserves the invoice id first (a repeat answers
  nulls), ignores ``clickId``, answers nulls for an unknown customer and records ``amount`` 0.
- Customers: ``PATCH /customers/ext_<external id>`` (or Dub's ``cus_`` id) updates a known one:
  name, email, avatar, external id, and on Dub ``stripeCustomerId`` (``country`` is accepted
  and not stored, as Dub's route does).
- Commissions (Dub's ``GET /commissions`` and ``PATCH /commissions/{id}``): each recorded sale
  earns one ``pending`` sale commission (``earnings`` is the ``commission_rate`` share of the
  amount). Dub queues commission creation after the sale, so a refund handler that looks the
  commission up right away may find nothing: a commission appears ``delay`` seconds after its
  sale on the fake's clock. A PATCH sets a new absolute ``saleAmount`` (a partial refund; ``0``
  is ignored, as Dub's falsy check does), shifts it by ``modifySaleAmount`` (the deprecated
  ``amount`` and ``modifyAmount`` still read), or sets ``status`` (``refunded``,
  ``duplicate``, ``canceled``, ``fraud``). Refused with 400, as Dub refuses them: a paid
  commission, one whose payout is no longer ``pending`` or ``canceled``
  (:meth:`CommissionBook.lock_payout`), and a status it already has.

Example:
    >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
    >>> ledger = Ledger("dub", ClickBook("dub"), clock=lambda: 0.0)
    >>> lead = {"clickId": "c1", "eventName": "Sign up", "customerExternalId": "u1",
    ...         "customerName": None, "customerEmail": None, "customerAvatar": None,
    ...         "mode": "async", "metadata": None}
    >>> ledger.lead(lead).payload["link"] is None, ledger.lead(lead).payload["link"] is None
    (False, True)
    >>> book = CommissionBook(lambda: 0.0)
    >>> made = book.create(amount=4900, currency="usd", invoice_id="in_1", customer=None)
    >>> [c["earnings"] for c in book.list({"invoiceId": "in_1"})]
    [490]
    >>> book.update(made["id"], {"status": "refunded"})[1]["status"]
    'refunded'
"""

from __future__ import annotations

import itertools
import secrets
import string
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationError

from ..._providers import get_provider
from ._bodies import ProviderName, validation_message
from ._clicks import WEEK, ClickBook, ExpiringKeys, lead_event_key
from ._webhooks import iso_timestamp
from ._wire import error_body

__all__ = ["FAKE_PARTNER", "Answer", "CommissionBook", "Ledger"]


#: The partner a commission names when the sale's click came through no partner link.
FAKE_PARTNER: dict[str, Any] = {
    "id": "pn_fakepartner0000000000000",
    "name": "Fake Partner",
    "email": "partner@example.com",
    "image": None,
    "payoutsEnabledAt": None,
    "country": "US",
    "groupId": None,
}


def _commission_id() -> str:
    alphabet = string.digits + string.ascii_uppercase
    return "cm_" + "".join(secrets.choice(alphabet) for _ in range(25))


class _CommissionUpdate(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    saleAmount: float | None = None
    modifySaleAmount: float | None = None
    amount: float | None = None  # deprecated for saleAmount, still read
    modifyAmount: float | None = None  # deprecated for modifySaleAmount, still read
    currency: str = "usd"
    status: Literal["refunded", "duplicate", "canceled", "fraud"] | None = None


# Dub's MUTABLE_PAYOUT_STATUSES: a commission in any other payout cannot change.
_MUTABLE_PAYOUTS = ("pending", "canceled")


class _StrictCommissionUpdate(_CommissionUpdate):
    model_config = ConfigDict(strict=True, extra="forbid")


class CommissionBook:
    """The commissions of the fake's recorded sales. Not locked: the fake locks around it.

    Example:
        >>> CommissionBook(lambda: 0.0, delay=2.0).list({})
        []
    """

    def __init__(
        self, clock: Callable[[], float], *, delay: float = 0.0, rate: float = 0.1
    ) -> None:
        if delay < 0:
            raise ValueError(f"commission_delay: must be >= 0, got {delay!r}")
        if not 0 <= rate <= 1:
            raise ValueError(f"commission_rate: must be between 0 and 1, got {rate!r}")
        self._clock = clock
        self.delay = delay
        self.rate = rate
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}
        self._payouts: dict[str, str] = {}  # commission id -> its payout's status

    def reset(self) -> None:
        """Forget every commission.

        Example:
            >>> book = CommissionBook(lambda: 0.0)
            >>> _ = book.create(amount=1, currency="usd", invoice_id=None, customer=None)
            >>> book.reset(); book.list({})
            []
        """
        self._items.clear()
        self._payouts.clear()

    def lock_payout(self, invoice_id: str, status: str = "processing") -> int:
        """Put the commissions of ``invoice_id`` in a payout of ``status``; how many.

        A payout ``processing``, ``completed`` (or any but ``pending`` and ``canceled``) locks
        them: a PATCH answers 400 "Its payout is already ...".

        Example:
            >>> book = CommissionBook(lambda: 0.0)
            >>> made = book.create(amount=100, currency="usd", invoice_id="in_1", customer=None)
            >>> book.lock_payout("in_1"), book.update(made["id"], {"status": "refunded"})[0]
            (1, 400)
        """
        found = [cid for cid, (_, c) in self._items.items() if c["invoiceId"] == invoice_id]
        for commission_id in found:
            self._payouts[commission_id] = status
        return len(found)

    def create(
        self,
        *,
        amount: int,
        currency: str,
        invoice_id: str | None,
        customer: dict[str, Any] | None,
        partner: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the commission of one sale; it shows ``delay`` seconds from now.

        Example:
            >>> book = CommissionBook(lambda: 0.0)
            >>> book.create(amount=999, currency="eur", invoice_id=None, customer=None)["status"]
            'pending'
        """
        now = self._clock()
        stamp = iso_timestamp(now)
        commission: dict[str, Any] = {
            "id": _commission_id(),
            "type": "sale",
            "amount": amount,
            "earnings": self._earnings(amount),
            "currency": currency,
            "status": "pending",
            "invoiceId": invoice_id,
            "description": None,
            "quantity": 1,
            "userId": None,
            "createdAt": stamp,
            "updatedAt": stamp,
            "partner": {**FAKE_PARTNER, **(partner or {})},
            "customer": customer,
        }
        self._items[commission["id"]] = (now + self.delay, commission)
        return commission

    def list(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """The visible commissions matching ``invoiceId``, ``status``, ``customerId``; newest first.

        Example:
            >>> CommissionBook(lambda: 0.0).list({"invoiceId": "in_404"})
            []
        """
        now = self._clock()
        found = []
        for visible_at, commission in self._items.values():
            if visible_at > now:
                continue  # still being created
            customer = commission["customer"] or {}
            if "invoiceId" in query and commission["invoiceId"] != query["invoiceId"]:
                continue
            if "status" in query and commission["status"] != query["status"]:
                continue
            if "customerId" in query and customer.get("id") != query["customerId"]:
                continue
            found.append(dict(commission))
        return found[::-1]

    def update(
        self, commission_id: str, data: Any, *, strict: bool = True
    ) -> tuple[int, dict[str, Any]]:
        """Handle ``PATCH /commissions/{id}``: the status and the JSON answer.

        Example:
            >>> CommissionBook(lambda: 0.0).update("cm_nope", {"status": "refunded"})[0]
            404
        """
        entry = self._items.get(commission_id)
        if entry is None or entry[0] > self._clock():
            return 404, error_body("not_found", f"Commission {commission_id} not found.")
        commission = entry[1]
        model = _StrictCommissionUpdate if strict else _CommissionUpdate
        try:
            change = model.model_validate(data)
        except ValidationError as exc:
            return 422, error_body("unprocessable_entity", validation_message(exc))
        # Dub's order (update-partner-commission.ts): paid, then the payout, then the status.
        if commission["status"] == "paid":
            message = f"Cannot update commission: Commission {commission_id} has already been paid."
            return 400, error_body("bad_request", message)
        payout = self._payouts.get(commission_id)
        if payout is not None and payout not in _MUTABLE_PAYOUTS:
            message = f"Cannot update commission: Its payout is already {payout}."
            return 400, error_body("bad_request", message)
        if change.status is not None and change.status == commission["status"]:
            message = f"This commission is already in the {change.status} status."
            return 400, error_body("bad_request", message)
        absolute = change.saleAmount if change.saleAmount is not None else change.amount
        shift = (
            change.modifySaleAmount if change.modifySaleAmount is not None else change.modifyAmount
        )
        if absolute is not None and absolute < 0:
            return 422, error_body("unprocessable_entity", "saleAmount: must be >= 0")
        if absolute or shift:
            original = commission["amount"]
            # The shift takes precedence over the absolute amount, as in Dub.
            new_amount = original + shift if shift else absolute or 0
            final = max(round(new_amount), 0)
            commission["amount"] = final
            commission["earnings"] = self._earnings(final)
        if change.status is not None:
            commission["status"] = change.status
        commission["updatedAt"] = iso_timestamp(self._clock())
        return 200, {k: v for k, v in commission.items() if k not in ("partner", "customer")}

    def _earnings(self, amount: int) -> int:
        return round(amount * self.rate)


_ADJECTIVES = ("Amber", "Brisk", "Coral", "Dusky", "Eager", "Fuzzy", "Gentle", "Hazel")

_ANIMALS = ("Otter", "Heron", "Lynx", "Marten", "Newt", "Quail", "Robin", "Stoat")

_DIRECT_SALE_LEAD = "Direct sale tracking lead event"


@dataclass(frozen=True)
class Answer:
    """The fake's answer to one tracking request, whether it recorded it, and its webhook.

    Example:
        >>> Answer(200, {"customer": None, "sale": None}, recorded=False).recorded
        False
    """

    status: int
    payload: Any
    recorded: bool = False
    webhook: tuple[str, dict[str, Any]] | None = None


def _random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)} {secrets.choice(_ANIMALS)}"


class Ledger:
    """Customers, lead events, dedup keys and sales of one fake workspace. Not locked.

    Example:
        >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
        >>> Ledger("pimms", ClickBook("pimms"), clock=lambda: 0.0).customers()
        []
    """

    def __init__(
        self,
        provider: ProviderName,
        clicks: ClickBook,
        *,
        clock: Callable[[], float],
        commissions: CommissionBook | None = None,
        disabled_clicks: Collection[str] = (),
        foreign_clicks: Collection[str] = (),
        lead_delay: float = 0.0,
    ) -> None:
        if lead_delay < 0:
            raise ValueError(f"lead_delay: must be >= 0 seconds, got {lead_delay!r}")
        self.lead_delay = lead_delay
        self.provider = provider
        self._facts = get_provider(provider)
        # Clicks whose link is disabled, or belongs to another workspace (Dub checks both).
        self.disabled_clicks = set(disabled_clicks)
        self.foreign_clicks = set(foreign_clicks)
        self._clock = clock
        self.clicks = clicks
        self.commissions = commissions
        self.keys = ExpiringKeys(clock)
        self.reset()

    def reset(self) -> None:
        """Forget customers, lead events and dedup keys (clicks and commissions are separate).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> Ledger("dub", ClickBook("dub"), clock=lambda: 0.0).reset()
        """
        self._customers: dict[str, dict[str, Any]] = {}
        # external id -> (event name, when it shows to sales) of each recorded lead
        self._lead_events: dict[str, list[tuple[str, float]]] = {}
        # external id -> when a customer made in the background shows (PIMMS' async leads)
        self._hidden_until: dict[str, float] = {}
        self._counter = itertools.count(1)
        self.keys.clear()

    def customers(self) -> list[dict[str, Any]]:
        """The customers the workspace has, oldest first (copies).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> Ledger("dub", ClickBook("dub"), clock=lambda: 0.0).customers()
            []
        """
        now = self._clock()
        return [
            dict(customer)
            for external_id, customer in self._customers.items()
            if self._hidden_until.get(external_id, now) <= now
        ]

    def _customer(self, external_id: str) -> dict[str, Any] | None:
        """The customer, once it shows (a background upsert may not have run yet)."""
        if self._hidden_until.get(external_id, 0.0) > self._clock():
            return None
        return self._customers.get(external_id)

    # -- customers ------------------------------------------------------------------------------

    def _create_customer(
        self, external_id: str, fields: dict[str, Any], click_id: str | None
    ) -> dict[str, Any]:
        customer = {
            "id": f"cus_fake{next(self._counter):012d}",
            "externalId": external_id,
            "name": fields.get("customerName") or fields.get("customerEmail") or _random_name(),
            "email": fields.get("customerEmail"),
            "avatar": fields.get("customerAvatar"),
            "country": None,
            "stripeCustomerId": None,
            "clickId": click_id,
            "sales": 0,
            "saleAmount": 0,
            "createdAt": iso_timestamp(self._clock()),
        }
        self._customers[external_id] = customer
        return customer

    @staticmethod
    def _brief(customer: dict[str, Any], *, with_id: bool = False) -> dict[str, Any]:
        keys = ("name", "email", "avatar", "externalId")
        brief = {k: customer[k] for k in keys}
        return {"id": customer["id"], **brief} if with_id else brief

    def link_for(self, click_id: str) -> dict[str, Any]:
        """The link a click belongs to, shaped like Dub's (a stand-in for unrecorded clicks).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> Ledger("dub", ClickBook("dub"), clock=lambda: 0.0).link_for("c1")["key"]
            'fake'
        """
        click = self.clicks.get(click_id)
        domain, key = (click.domain, click.key) if click else (f"{self.provider}.fake", "fake")
        partner = click.partner if click else None
        return {
            "id": f"link_fake_{domain}_{key}",
            "domain": domain,
            "key": key,
            "shortLink": f"https://{domain}/{key}",
            "url": click.url if click else None,
            "programId": "prog_fake" if partner else None,
            "partnerId": partner.get("id") if partner else None,
        }

    def link_refusal(self, click_id: str | None, owner: str, what: str) -> Answer | None:
        """Dub's 404 for a click whose link is of another workspace or disabled, else None.

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> ledger = Ledger("dub", ClickBook("dub"), clock=lambda: 0.0, disabled_clicks={"c"})
            >>> ledger.link_refusal("c", "clickId c", "lead").payload["error"]["message"]
            'Link link_fake_dub.fake_fake for clickId c is disabled, lead not tracked'
        """
        if self.provider != "dub" or not click_id:
            return None
        link = self.link_for(click_id)["id"]
        if click_id in self.foreign_clicks:
            message = f"Link {link} for {owner} does not belong to the workspace"
        elif click_id in self.disabled_clicks:
            message = f"Link {link} for {owner} is disabled, {what} not tracked"
        else:
            return None
        return Answer(404, error_body("not_found", message))

    # -- leads ----------------------------------------------------------------------------------

    def lead(self, fields: dict[str, Any]) -> Answer:
        """Handle a valid lead body (defaults filled in).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> ledger = Ledger("dub", ClickBook("dub"), clock=lambda: 0.0)
            >>> ledger.lead({"clickId": "", "customerExternalId": "u9", "eventName": "e",
            ...              "mode": "async"}).status
            400
        """
        dub = self.provider == "dub"
        external_id: str = fields[self._facts.customer_key]
        customer = self._customers.get(external_id)
        click_id: str = fields["clickId"]
        if not click_id:  # only Dub lets it through validation
            if customer is None or not customer["clickId"]:
                message = (
                    "The `clickId` property was not provided in the request, and no existing "
                    "customer with the provided `customerExternalId` was found."
                )
                return Answer(400, error_body("bad_request", message))
            click_id = customer["clickId"]
        deferred = fields["mode"] == "deferred"
        fresh = True
        if not deferred:
            name_key = lead_event_key(fields["eventName"], every_space=dub)
            fresh = self.keys.reserve(("lead", external_id, name_key), WEEK if dub else None)
        link: dict[str, Any] | None = None
        webhook = None
        if fresh:
            if not self.clicks.known(click_id):
                message = f"Click event not found for clickId: {click_id}"
                return Answer(404, error_body("not_found", message))
            refused = self.link_refusal(click_id, f"clickId {click_id}", "lead")
            if refused is not None:
                return refused
            # An async lead is recorded in the background: it shows to sales later.
            shows = self._clock() + (self.lead_delay if fields["mode"] == "async" else 0.0)
            if customer is None:
                customer = self._create_customer(external_id, fields, click_id)
                if not dub and shows > self._clock():  # PIMMS upserts it in the background
                    self._hidden_until[external_id] = shows
            elif not dub:  # PIMMS upserts: latest click, profile filled where given
                customer["clickId"] = click_id
                for key, source in (("name", "customerName"), ("email", "customerEmail")):
                    customer[key] = fields.get(source) or customer[key]
                customer["avatar"] = fields.get("customerAvatar") or customer["avatar"]
            link = self.link_for(click_id)
            if not deferred:
                self._lead_events.setdefault(external_id, []).append((fields["eventName"], shows))
                data = {
                    "eventName": fields["eventName"],
                    "customer": dict(customer),
                    "click": {"id": click_id},
                    "link": link,
                    "metadata": fields.get("metadata"),
                }
                webhook = ("lead.created", data)
        brief = (
            self._brief(customer)
            if customer is not None
            else {
                "name": fields.get("customerName") or fields.get("customerEmail") or _random_name(),
                "email": fields.get("customerEmail"),
                "avatar": fields.get("customerAvatar"),
                "externalId": external_id,
            }
        )
        payload: dict[str, Any]
        if dub:
            payload = {"click": {"id": click_id}, "link": link, "customer": brief}
        else:
            payload = {
                "click": {"id": click_id},
                "customer": brief,
                # PIMMS repeats these at the top level for older clients.
                "clickId": click_id,
                "customerName": brief["name"],
                "customerEmail": brief["email"],
                "customerAvatar": brief["avatar"],
            }
        return Answer(200, payload, recorded=fresh, webhook=webhook)

    # -- sales ----------------------------------------------------------------------------------

    def _has_lead(self, external_id: str, lead_event_name: str | None) -> bool:
        now = self._clock()
        shown = [name for name, shows in self._lead_events.get(external_id, []) if shows <= now]
        return lead_event_name in shown if lead_event_name is not None else bool(shown)

    def sale(self, fields: dict[str, Any]) -> Answer:
        """Handle a valid sale body (defaults filled in).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> ledger = Ledger("dub", ClickBook("dub"), clock=lambda: 0.0)
            >>> ledger.sale({"customerExternalId": "nobody", "amount": 100, "eventName": "Purchase",
            ...              "invoiceId": None, "clickId": None, "leadEventName": None}).payload
            {'eventName': 'Purchase', 'customer': None, 'sale': None}
        """
        dub = self.provider == "dub"
        external_id: str = fields[self._facts.customer_key]
        invoice_id: str | None = fields["invoiceId"]
        nulls = Answer(200, {"eventName": fields["eventName"], "customer": None, "sale": None})
        if invoice_id:
            if dub and (cached := self.keys.get(("sale", invoice_id))) is not None:
                return Answer(200, cached)
            if not dub and not self.keys.reserve(("sale", invoice_id), WEEK):
                return nulls
        customer = self._customer(external_id)
        lead_name: str | None = fields["leadEventName"]
        if customer is not None:
            owner = f"customer {customer['id']}"
            refused = self.link_refusal(customer["clickId"], owner, "sale")
            if refused is not None:
                return refused
        if customer is not None and not self._has_lead(external_id, lead_name):
            label = "leadEventName" if dub else "eventName"
            message = f"Lead event not found for externalId: {external_id} and {label}: {lead_name}"
            return Answer(404, error_body("not_found", message))
        click_id: str | None = fields.get("clickId") if self._facts.direct_sales else None
        if customer is None and not click_id:
            return nulls
        if click_id and not self.clicks.known(click_id):
            message = f"Click event not found for clickId: {click_id}"
            return Answer(404, error_body("not_found", message))
        if click_id and customer is None:
            refused = self.link_refusal(click_id, f"clickId {click_id}", "sale")
            if refused is not None:
                return refused
        if customer is None:  # Dub's direct sale tracking: the click makes the customer
            customer = self._create_customer(external_id, fields, click_id)
            made = (lead_name or _DIRECT_SALE_LEAD, self._clock())
            self._lead_events.setdefault(external_id, []).append(made)
        if dub and fields["amount"] <= 0:
            return nulls
        return self._record_sale(fields, customer, click_id or customer["clickId"])

    def _record_sale(
        self, fields: dict[str, Any], customer: dict[str, Any], click_id: str | None
    ) -> Answer:
        amount: int = fields["amount"]
        currency = fields["currency"].lower()
        sale = {
            "amount": amount,
            "currency": currency,
            "paymentProcessor": fields["paymentProcessor"],
            "invoiceId": fields["invoiceId"],
            "metadata": fields.get("metadata"),
        }
        customer["sales"] += 1
        customer["saleAmount"] += amount
        payload: dict[str, Any] = {
            "eventName": fields["eventName"],
            "customer": self._brief(customer, with_id=True),
            "sale": sale,
        }
        if self.provider == "dub" and fields["invoiceId"]:
            self.keys.put(("sale", fields["invoiceId"]), payload, WEEK)
        if self.provider == "pimms":
            payload = {**payload, **sale}  # PIMMS repeats the sale at the top level
        click = self.clicks.get(click_id) if click_id else None
        if self.commissions is not None:
            self.commissions.create(
                amount=amount,
                currency=currency,
                invoice_id=fields["invoiceId"],
                customer=self._brief(customer, with_id=True),
                partner=click.partner if click else None,
            )
        data = {
            "eventName": fields["eventName"],
            "customer": dict(customer),
            "click": {"id": click_id},
            "link": self.link_for(click_id) if click_id else None,
            "sale": sale,
        }
        return Answer(200, payload, recorded=True, webhook=("sale.created", data))

    # -- customer updates -----------------------------------------------------------------------

    def update_customer(self, ref: str, fields: dict[str, Any]) -> Answer:
        """Handle ``PATCH /customers/{ref}`` (``ref`` still URL-escaped).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> Ledger("dub", ClickBook("dub"), clock=lambda: 0.0).update_customer(
            ...     "ext_nobody", {"name": "Ada"}).status
            404
        """
        ref = unquote(ref)
        dub = self.provider == "dub"
        if ref.startswith("ext_"):
            customer = self._customer(ref.removeprefix("ext_"))
        else:
            customer = next((c for c in self._customers.values() if c["id"] == ref), None)
        if customer is None:
            message = (
                "Customer not found. Make sure you're using the correct customer ID (e.g. "
                "`cus_3TagGjzRzmsFJdH8od2BNCsc`) or external ID (has to be prefixed with `ext_`)."
            )
            return Answer(404, error_body("not_found", message))
        new_external_id = fields.get("externalId")
        if new_external_id and new_external_id != customer["externalId"]:
            if new_external_id in self._customers:
                message = "A customer with this external ID already exists."
                return Answer(409, error_body("conflict", message))
            old = customer["externalId"]
            self._customers[new_external_id] = self._customers.pop(old)
            self._lead_events[new_external_id] = self._lead_events.pop(old, [])
        # The fields the route stores: Dub reads country and drops it; PIMMS has no Stripe id.
        stored = ("name", "email", "avatar", "externalId") + (("stripeCustomerId",) if dub else ())
        for key in stored:
            if fields.get(key) is not None:
                customer[key] = fields[key]
        public = {k: v for k, v in customer.items() if k != "clickId"}
        return Answer(200, public, recorded=True)

    def legacy_customer(self, fields: dict[str, Any]) -> Answer:
        """Handle Dub's removed ``POST /track/customer`` (served only with ``legacy_routes``).

        Example:
            >>> from asgi_attribution.testing.fake_provider._clicks import ClickBook
            >>> ledger = Ledger("dub", ClickBook("dub"), clock=lambda: 0.0)
            >>> ledger.legacy_customer({"customerId": "u1", "customerName": "Ada"}).status
            200
        """
        external_id = fields["customerId"]
        customer = self._customers.get(external_id)
        if customer is None:
            self._create_customer(external_id, fields, None)
        else:
            for key, source in (("name", "customerName"), ("email", "customerEmail")):
                customer[key] = fields.get(source) or customer[key]
            customer["avatar"] = fields.get("customerAvatar") or customer["avatar"]
        return Answer(200, dict(fields), recorded=True)
