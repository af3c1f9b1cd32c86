"""A sale never races its lead, nor a refund its sale (issue 27, item 2): causal order per
customer and per invoice in the memory queue, with leads from a queue sent as ``mode="wait"``.

Real sockets to the fake provider, whose async leads show to sales only after ``lead_delay``
(3 s), behind a proxy that slows every lead's answer: a sale sent while its lead is on the wire
would be refused ("lead not found") by Dub or answered with nulls by PIMMS. The proxy notes
each request's start and end, so the order and the overlap are counted, never timed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from starlette.types import Message, Receive, Scope, Send

from asgi_attribution import Delivery, DeliveryError, RetryPolicy, Tracker, TrackResult
from asgi_attribution.testing import FakeProvider, serve_in_thread
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_retry_after=1, max_elapsed=60)
CUSTOMERS = 20


@dataclass
class Watch:
    """A proxy before the provider: slows leads, and logs each request's start and end."""

    inner: Any
    lead_seconds: float = 0.3
    log: list[tuple[str, str, str, int]] = field(default_factory=list)  # (edge, kind, user, n)
    in_flight: int = 0
    most_in_flight: int = 0
    modes: dict[str, str | None] = field(default_factory=dict)  # customer -> lead mode sent
    answers: list[tuple[str, str, int, Any]] = field(default_factory=list)
    gated: str = ""  # a customer whose lead is held on the wire until ``gate`` is set
    gate: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        data = json.loads(body) if body else {}
        kind = scope["path"].rsplit("/", 1)[-1]
        if scope["path"].startswith("/commissions/"):
            kind = "commission"  # a refund's update; its lookup is "commissions"
        query = parse_qs(scope["query_string"].decode())
        invoice = query.get("invoiceId", [""])[0]  # a refund's lookup names only its invoice
        user = str(data.get("customerExternalId") or data.get("externalId") or invoice)
        if kind == "lead":
            self.modes[user] = data.get("mode")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.log.append(("start", kind, user, self.in_flight))
        answer: dict[str, Any] = {}

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            if message["type"] == "http.response.body":
                answer["body"] = message.get("body", b"")
                if not message.get("more_body"):
                    # Noted before the client can see the answer: "end" precedes what follows.
                    self.in_flight -= 1
                    self.log.append(("end", kind, user, self.in_flight))
                    self.answers.append((kind, user, answer["status"], answer["body"]))
            await send(message)

        if kind == "lead":
            await asyncio.sleep(self.lead_seconds)  # a slow lead: a racing sale would pass it
            while user == self.gated and not self.gate.is_set():
                await asyncio.sleep(0.01)
        await self.inner(scope, replay, keep)

    def lead_done_before_sale(self, user: str) -> bool:
        """The customer's lead was answered before their sale was first sent."""
        ends = [i for i, e in enumerate(self.log) if e[:3] == ("end", "lead", user)]
        starts = [i for i, e in enumerate(self.log) if e[:3] == ("start", "sale", user)]
        return bool(ends and starts) and ends[0] < starts[0]

    def refund_after_sale(self, user: str) -> bool:
        """The customer's sale was answered before their refund (of ``in_{user}``) first looked
        for its commission."""
        ends = [i for i, e in enumerate(self.log) if e[:3] == ("end", "sale", user)]
        looks = [
            i for i, e in enumerate(self.log) if e[:3] == ("start", "commissions", f"in_{user}")
        ]
        return bool(ends and looks) and ends[0] < looks[0]

    def answered(self, kind: str, user: str) -> bool:
        """An answer to ``kind`` for ``user`` (a customer, or an invoice for a lookup) ended."""
        return any(e[:3] == ("end", kind, user) for e in self.log)

    def lookups(self, invoice: str) -> int:
        """How many times a refund looked for the commission of ``invoice``."""
        return sum(1 for e in self.log if e[:3] == ("start", "commissions", invoice))

    def overlap_while_leads_fly(self) -> int:
        """The most requests on the wire at once while some lead was (other customers' too)."""
        return max((n for edge, kind, _, n in self.log if edge == "start"), default=0)

    def refused_sales(self) -> list[tuple[int, Any]]:
        """Sale answers that recorded nothing: a 404 (lead not found) or a 200 with nulls."""
        refused = []
        for kind, _, status, body in self.answers:
            if kind != "sale":
                continue
            data = json.loads(body) if body else {}
            if status != 200 or data.get("sale") is None:
                refused.append((status, data))
        return refused


@dataclass
class Tally:
    """What became of each event id (callbacks and the delivery records)."""

    delivered: list[str] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    results: dict[str, TrackResult] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def on_delivered(self, delivery: Delivery, result: TrackResult) -> None:
        self.delivered.append(delivery.event.event_id)
        self.results[delivery.event.event_id] = result
        self.kinds[delivery.event.event_id] = delivery.event.kind

    def on_error(self, delivery: Delivery, exc: Exception) -> None:
        self.errors[delivery.event.event_id] = exc

    def on_drop(self, delivery: Delivery, reason: str) -> None:
        self.dropped.append(delivery.event.event_id)


@dataclass
class Count:
    """The attack's scenario row."""

    sent: int
    delivered: int
    dup: int
    reported: int
    lost: int


def count(sent: list[str], tally: Tally, caplog: Any) -> Count:
    logged = {i for i in sent if any(i in r.getMessage() for r in caplog.records)}
    reported = {i for i in [*tally.errors, *tally.dropped] if i in logged}
    delivered = set(tally.delivered)
    dup = len(tally.delivered) - len(delivered)
    lost = len(set(sent) - delivered - reported)
    return Count(len(sent), len(delivered), dup, len(reported), lost)


async def track_pairs(tracker: Tracker, users: list[str], **lead: Any) -> list[str]:
    """A lead then a sale per customer, tracked back to back; the event ids."""
    ids = []
    for user in users:
        signup = await tracker.track_lead(
            click_id=f"clk_{user}", event_name="Sign up", customer_external_id=user, **lead
        )
        paid = await tracker.track_sale(
            customer_external_id=user, amount=4900, invoice_id=f"in_{user}"
        )
        assert (signup.status, paid.status) == ("queued", "queued")
        ids += [signup.event_id or "", paid.event_id or ""]
    return ids


async def track_triples(tracker: Tracker, users: list[str]) -> list[str]:
    """A lead, a sale and a full refund of that sale per customer, tracked back to back."""
    ids = []
    for user in users:
        ids += await track_pairs(tracker, [user])
        refund = await tracker.refund_sale(invoice_id=f"in_{user}")
        assert refund.status == "queued"
        ids.append(refund.event_id or "")
    return ids


def refunded(provider: FakeProvider, users: list[str]) -> set[str]:
    """The users whose sale's commission is refunded at the provider."""
    return {
        u
        for u in users
        if [c["status"] for c in provider.commissions(invoiceId=f"in_{u}")] == ["refunded"]
    }


def check_refunds(
    provider: FakeProvider, watch: Watch, tally: Tally, users: list[str], excluded: Any = ()
) -> None:
    """Every refund recorded once, none answered "no commission", each after its sale."""
    outcomes = [
        (r.outcome, r.outcome_reason)
        for i, r in tally.results.items()
        if tally.kinds[i] == "refund" and i not in excluded
    ]
    assert outcomes == [("recorded", None)] * len(users), outcomes
    assert refunded(provider, users) == set(users)
    assert all(watch.refund_after_sale(u) for u in users)
    # Each looked once: its commission was there (a refund racing its sale looks again).
    assert [watch.lookups(f"in_{u}") for u in users] == [1] * len(users)


def recorded_sales(provider: FakeProvider) -> set[str]:
    return {str(s.get("invoiceId")) for s in provider.sales()}


@pytest.mark.parametrize("name", ["dub", "pimms"])
async def test_each_sale_waits_for_its_lead_in_the_memory_queue(name: str, caplog: Any) -> None:
    provider = FakeProvider(name, api_key=KEY, lead_delay=3.0)  # type: ignore[arg-type]
    watch = Watch(provider)
    tally = Tally()
    users = [f"u{i}" for i in range(CUSTOMERS)]
    with serve_in_thread(watch) as url:
        tracker = Tracker(
            name,
            api_key=KEY,
            base_url=url,
            concurrency=10,
            retry=FAST,
            on_delivered=tally.on_delivered,
            on_error=tally.on_error,
            on_drop=tally.on_drop,
        )
        async with tracker:
            sent = await track_pairs(tracker, users)
            await tracker.flush(timeout=120)
    row = count(sent, tally, caplog)
    assert row == Count(2 * CUSTOMERS, 2 * CUSTOMERS, 0, 0, 0), row
    assert recorded_sales(provider) == {f"in_{u}" for u in users}
    assert watch.refused_sales() == []  # none refused "lead not found", none answered nulls
    assert all(watch.lead_done_before_sale(u) for u in users)
    assert set(watch.modes.values()) == {"wait"}  # queued leads go with mode="wait"
    # Not one global line: other customers' requests were on the wire together.
    assert watch.overlap_while_leads_fly() >= 5, watch.most_in_flight


async def test_an_explicit_async_lead_keeps_its_mode_and_its_sale_still_follows(
    caplog: Any,
) -> None:
    provider = FakeProvider("dub", api_key=KEY, lead_delay=3.0)
    watch = Watch(provider, lead_seconds=0.05)
    tally = Tally()
    users = ["a1", "a2", "a3"]
    with serve_in_thread(watch) as url:
        tracker = Tracker(
            "dub",
            api_key=KEY,
            base_url=url,
            concurrency=10,
            retry=FAST,
            on_delivered=tally.on_delivered,
            on_error=tally.on_error,
        )
        async with tracker:
            sent = await track_pairs(tracker, users, mode="async")
            await tracker.flush(timeout=120)
    assert count(sent, tally, caplog) == Count(6, 6, 0, 0, 0)
    assert set(watch.modes.values()) == {"async"}  # the caller's choice, kept
    # Dub shows an async lead only later: its sale, sent after the lead's answer, is refused
    # "lead not found" and retried until Dub shows the lead, then recorded.
    assert all(watch.lead_done_before_sale(u) for u in users)
    assert recorded_sales(provider) == {f"in_{u}" for u in users}


async def test_a_lead_that_fails_finally_releases_its_customers_sale(caplog: Any) -> None:
    # The lead's click is unknown: 404 "click not found" ends it; the sale then goes and gets
    # the provider's own answer (no customer: nothing recorded), reported, not held forever.
    provider = FakeProvider("dub", api_key=KEY, known_clicks={"clk_ok"})
    watch = Watch(provider, lead_seconds=0.05)
    tally = Tally()
    with serve_in_thread(watch) as url:
        tracker = Tracker(
            "dub",
            api_key=KEY,
            base_url=url,
            retry=FAST,
            on_delivered=tally.on_delivered,
            on_error=tally.on_error,
        )
        async with tracker:
            lead = await tracker.track_lead(
                click_id="clk_gone", event_name="Sign up", customer_external_id="lost"
            )
            sale = await tracker.track_sale(customer_external_id="lost", amount=100)
            other = await tracker.track_lead(
                click_id="clk_ok", event_name="Sign up", customer_external_id="fine"
            )
            await tracker.flush(timeout=60)
    sent = [lead.event_id or "", sale.event_id or "", other.event_id or ""]
    assert isinstance(tally.errors.get(sent[0]), DeliveryError)
    assert watch.lead_done_before_sale("lost")
    row = count(sent, tally, caplog)
    assert (row.sent, row.lost, row.dup) == (3, 0, 0), row
    assert sent[1] in tally.delivered or sent[1] in tally.errors  # the sale went, and ended


async def test_each_refund_waits_for_its_sale_in_the_memory_queue(caplog: Any) -> None:
    provider = FakeProvider("dub", api_key=KEY, lead_delay=3.0)
    watch = Watch(provider, gated="r0")  # r0's lead stays on the wire until the others are done
    tally = Tally()
    users = [f"r{i}" for i in range(CUSTOMERS)]
    with serve_in_thread(watch) as url:
        tracker = Tracker(
            "dub",
            api_key=KEY,
            base_url=url,
            timeout=60,  # r0's lead is one attempt, however long the others take
            concurrency=10,
            retry=FAST,
            on_delivered=tally.on_delivered,
            on_error=tally.on_error,
            on_drop=tally.on_drop,
        )
        async with tracker:
            sent = await track_triples(tracker, users)
            # Other invoices are not held: every other refund is recorded while r0's lead,
            # and so its sale and refund, wait.
            for _ in range(6000):
                if refunded(provider, users[1:]) == set(users[1:]):
                    break
                await asyncio.sleep(0.02)
            assert refunded(provider, users[1:]) == set(users[1:])
            assert not watch.answered("lead", "r0") and not watch.answered("sale", "r0")
            assert watch.lookups("in_r0") == 0
            watch.gate.set()
            await tracker.flush(timeout=120)
    row = count(sent, tally, caplog)
    assert row == Count(3 * CUSTOMERS, 3 * CUSTOMERS, 0, 0, 0), row
    assert recorded_sales(provider) == {f"in_{u}" for u in users}
    assert watch.refused_sales() == []
    check_refunds(provider, watch, tally, users)


async def test_a_sale_that_fails_for_good_releases_its_refund(caplog: Any) -> None:
    # A direct sale on a disabled link is final (404 link_disabled); its refund then goes, finds
    # no commission and ends "no_commission" once its window is over; another customer's lead,
    # sale and refund go through meanwhile.
    caplog.set_level(logging.INFO, logger="asgi_attribution")
    provider = FakeProvider("dub", api_key=KEY, disabled_clicks={"clk_off"})
    watch = Watch(provider, lead_seconds=0.05)
    tally = Tally()
    short = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_retry_after=1, max_elapsed=8)
    with serve_in_thread(watch) as url:
        tracker = Tracker(
            "dub",
            api_key=KEY,
            base_url=url,
            retry=short,
            on_delivered=tally.on_delivered,
            on_error=tally.on_error,
            on_drop=tally.on_drop,
        )
        async with tracker:
            sale = await tracker.track_sale(
                customer_external_id="lost", amount=4900, invoice_id="in_lost", click_id="clk_off"
            )
            refund = await tracker.refund_sale(invoice_id="in_lost")
            sent = [sale.event_id or "", refund.event_id or ""]
            sent += await track_triples(tracker, ["fine"])
            await tracker.flush(timeout=60)
    failed = tally.errors.get(sent[0])
    assert isinstance(failed, DeliveryError) and failed.code == "link_disabled", failed
    assert watch.refund_after_sale("lost")  # held until the sale ended, then released
    result = tally.results[sent[1]]
    assert (result.outcome, result.outcome_reason) == ("not_recorded", "no_commission")
    assert any(
        sent[1] in r.getMessage() and "no_commission" in r.getMessage() for r in caplog.records
    )
    check_refunds(provider, watch, tally, ["fine"], excluded={sent[1]})
    row = count(sent, tally, caplog)
    assert row == Count(5, 4, 0, 1, 0), row
