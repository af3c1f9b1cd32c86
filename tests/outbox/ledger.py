"""Counting an attack against the fake provider's ledger: sent, delivered, duplicates, reported
(named by id in a log line or an ``on_drop`` call) and silently lost (neither delivered nor
reported). Each lead of :func:`lead` has its own customer, so the ledger tells events apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asgi_attribution import DUB, LeadEvent
from asgi_attribution.transports import Delivery

__all__ = ["Tally", "lead", "tally"]


def lead(i: int, prefix: str = "u") -> Delivery:
    return Delivery(
        LeadEvent(click_id=f"c{i}", event_name="Sign up", customer_external_id=f"{prefix}{i}"),
        DUB,
    )


@dataclass(frozen=True)
class Tally:
    sent: int
    delivered: int
    duplicates: int
    reported: int
    silently_lost: list[str]

    def row(self, scenario: str) -> str:
        """One line of the scenario table (printed: ``pytest -s`` shows it)."""
        return (
            f"| {scenario} | {self.sent} | {self.delivered} | {self.duplicates} | "
            f"{self.reported} | {len(self.silently_lost)} |"
        )


def tally(
    provider: Any, deliveries: Iterable[Delivery], log_text: str = "", dropped: Iterable[str] = ()
) -> Tally:
    """Count ``deliveries`` in the provider's ledger: every ``/track/lead`` call it answered
    2xx (a second one for the same customer is answered 200 too, with ``link: null``: Dub
    records nothing then, so ``accepted`` alone would hide it)."""
    counts = Counter(
        (r.body or {}).get("customerExternalId")
        for r in provider.requests
        if r.path == "/track/lead" and 200 <= r.status < 300
    )
    sent = list(deliveries)
    customers = {d.event.event_id: str(getattr(d.event, "customer_external_id", "")) for d in sent}
    named = set(dropped) | {eid for eid in customers if eid in log_text}
    delivered = [eid for eid, c in customers.items() if counts[c] >= 1]
    lost = [eid for eid, c in customers.items() if counts[c] == 0 and eid not in named]
    return Tally(
        sent=len(sent),
        delivered=len(delivered),
        duplicates=sum(max(0, counts[c] - 1) for c in customers.values()),
        reported=len(named),
        silently_lost=lost,
    )
