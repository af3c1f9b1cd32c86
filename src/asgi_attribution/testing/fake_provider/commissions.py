"""Partner commissions, for refunds: Dub's ``GET /commissions`` and ``PATCH /commissions/{id}``.

Each recorded sale of the fake earns one ``pending`` sale commission (``earnings`` is the
``commission_rate`` share of the amount). Dub queues commission creation after the sale, so a
refund handler that looks the commission up right away may find nothing: a commission appears
``delay`` seconds after its sale on the fake's clock.

A PATCH sets a new absolute ``amount`` (a partial refund; ``0`` is ignored, as Dub's falsy check
does), shifts it by ``modifyAmount``, or sets ``status`` (``refunded``, ``duplicate``,
``canceled``, ``fraud``); a paid commission cannot change.

Example:
    >>> book = CommissionBook(lambda: 0.0)
    >>> made = book.create(amount=4900, currency="usd", invoice_id="in_1", customer=None)
    >>> [c["earnings"] for c in book.list({"invoiceId": "in_1"})]
    [490]
    >>> book.update(made["id"], {"status": "refunded"})[1]["status"]
    'refunded'
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .bodies import validation_message
from .webhooks import iso_timestamp
from .wire import error_body

__all__ = ["FAKE_PARTNER", "CommissionBook"]

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

    amount: float | None = None
    modifyAmount: float | None = None
    currency: str = "usd"
    status: Literal["refunded", "duplicate", "canceled", "fraud"] | None = None


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

    def reset(self) -> None:
        """Forget every commission.

        Example:
            >>> book = CommissionBook(lambda: 0.0)
            >>> _ = book.create(amount=1, currency="usd", invoice_id=None, customer=None)
            >>> book.reset(); book.list({})
            []
        """
        self._items.clear()

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
        if commission["status"] == "paid":
            message = f"Cannot update amount: Commission {commission_id} has already been paid."
            return 400, error_body("bad_request", message)
        model = _StrictCommissionUpdate if strict else _CommissionUpdate
        try:
            change = model.model_validate(data)
        except ValidationError as exc:
            return 422, error_body("unprocessable_entity", validation_message(exc))
        if change.amount is not None and change.amount < 0:
            return 422, error_body("unprocessable_entity", "amount: must be >= 0")
        if change.amount or change.modifyAmount:
            original = commission["amount"]
            # modifyAmount takes precedence over amount, as in Dub.
            new_amount = (
                original + (change.modifyAmount or 0) if change.modifyAmount else change.amount or 0
            )
            final = max(round(new_amount), 0)
            commission["amount"] = final
            commission["earnings"] = self._earnings(final)
        if change.status is not None:
            commission["status"] = change.status
        commission["updatedAt"] = iso_timestamp(self._clock())
        return 200, {k: v for k, v in commission.items() if k not in ("partner", "customer")}

    def _earnings(self, amount: int) -> int:
        return round(amount * self.rate)
