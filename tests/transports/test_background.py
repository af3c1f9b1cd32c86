"""The background queue's bookkeeping: every queued event is reported exactly once.

Deliveries go to the FakeProvider over a real socket, or to a MemoryTransport whose handler
refuses some events; nothing of HTTP is mocked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from asgi_attribution import (
    DUB,
    BackgroundTransport,
    Delivery,
    DeliveryError,
    DeliveryStats,
    HTTPTransport,
    LeadEvent,
    MemoryTransport,
    RetryPolicy,
    TrackResult,
    Transport,
)
from asgi_attribution.testing import FakeProvider, Faults
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.005, max_elapsed=30)


def lead(user: str) -> Delivery:
    return Delivery(LeadEvent(click_id="c", event_name="Sign up", customer_external_id=user), DUB)


def balanced(transport: BackgroundTransport) -> bool:
    s = transport.stats
    return s.queued == s.sent + s.failed + s.dropped + transport.pending


class AfterRetryIsScheduled(logging.Handler):
    """Resolves ``reached`` ``turns`` loop iterations after the first retry is logged."""

    def __init__(self, turns: int) -> None:
        super().__init__(logging.INFO)
        self.turns = turns
        self.reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def emit(self, record: logging.LogRecord) -> None:
        if not hasattr(record, "retry_in") or self.reached.done():
            return
        loop = asyncio.get_running_loop()

        def step(left: int) -> None:
            if left == 0:
                if not self.reached.done():
                    self.reached.set_result(None)
            else:
                loop.call_soon(step, left - 1)

        step(self.turns)


@pytest.mark.parametrize("turns", range(6))
async def test_shutdown_as_a_retry_comes_due_reports_the_event_once(
    provider: FakeProvider, url: str, turns: int
) -> None:
    """aclose() at each loop turn after a zero-wait retry was scheduled (the race of the old
    four containers: a retry already back in the queue was queued a second time)."""
    provider.faults = Faults(error_rate=1.0)  # every attempt a 503
    reports: list[str] = []
    no_wait = RetryPolicy(initial_backoff=0, max_backoff=0, max_attempts=2)
    transport = BackgroundTransport(
        HTTPTransport(KEY, base_url=url, retry=no_wait),
        concurrency=1,
        shutdown_timeout=5,
        on_error=lambda d, exc: reports.append("error"),
        on_drop=lambda d, reason: reports.append("drop"),
    )
    watcher = AfterRetryIsScheduled(turns)
    logger = logging.getLogger("asgi_attribution")
    level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.INFO)
    try:
        await transport.start()
        await transport.send(lead("u1"))
        await watcher.reached
        await transport.aclose()
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)
    assert reports == ["error"]  # the last attempt at shutdown failed: reported once
    stats = transport.stats
    assert (stats.queued, stats.retried, stats.failed, stats.dropped) == (1, 1, 1, 0)
    assert transport.pending == 0 and balanced(transport)


class Script:
    """A provider by customer id: ``ok`` answers, ``flaky`` refuses twice (retryably) then
    answers, ``bad`` refuses for good, ``down`` always refuses retryably."""

    def __init__(self) -> None:
        self.tries: Counter[str] = Counter()

    def __call__(self, delivery: Delivery) -> Any:
        user = str(getattr(delivery.event, "customer_external_id", ""))
        kind = user.split("-")[0]
        self.tries[user] += 1
        event_id = delivery.event.event_id
        if kind == "bad":
            raise DeliveryError(event_id, "unprocessable_entity", "no", status_code=422)
        if kind == "down" or (kind == "flaky" and self.tries[user] <= 2):
            raise DeliveryError(event_id, "http_503", "later", status_code=503, retryable=True)
        return {"ok": True}


def test_every_queued_event_ends_once_as_sent_failed_or_dropped() -> None:
    """queued == sent + failed + dropped + pending after every step, across event loops."""
    script = Script()
    patient = RetryPolicy(initial_backoff=0.001, max_backoff=0.005, max_attempts=10_000)
    memory = MemoryTransport(script, retry=patient)  # "down" events never give up
    transport = BackgroundTransport(memory, concurrency=3, shutdown_timeout=0.2)
    kinds = ["ok", "flaky", "bad", "ok", "flaky", "down", "ok", "bad"]

    async def burst(tag: str, flush: bool) -> None:
        for i, kind in enumerate(kinds):
            result = await transport.send(lead(f"{kind}-{tag}{i}"))
            assert result.status == "queued" and balanced(transport)
            await asyncio.sleep(0)
            assert balanced(transport)
        if flush:
            await transport.flush(0.2)  # "down" events keep retrying: flush times out
            assert balanced(transport)

    asyncio.run(burst("a", flush=False))  # the loop ends with jobs mid-attempt or mid-backoff
    assert balanced(transport) and transport.pending > 0

    async def then_close() -> None:
        await burst("b", flush=True)  # this loop takes the first loop's jobs over
        await transport.aclose()
        assert balanced(transport)

    asyncio.run(then_close())
    stats = transport.stats
    assert transport.pending == 0 and balanced(transport)
    assert stats.queued == 16
    assert (stats.sent, stats.failed, stats.dropped) == (10, 4, 2)  # ok+flaky, bad, down
    delivered = Counter(str(getattr(e, "customer_external_id", "")) for e in memory.events)
    assert set(delivered.values()) == {1}  # none delivered twice
    assert stats.retried >= sum(n - 1 for n in script.tries.values())  # scheduled retries


async def test_a_retryable_refusal_is_retried_with_the_inner_transports_policy() -> None:
    script = Script()
    transport = BackgroundTransport(MemoryTransport(script, retry=FAST), concurrency=1)
    await transport.send(lead("flaky-1"))
    await transport.flush()
    assert script.tries["flaky-1"] == 3
    assert (transport.stats.sent, transport.stats.retried) == (1, 2)
    await transport.aclose()


class OldStyle(Transport):
    """A transport of the old contract: ``send`` only, retrying on its own."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, delivery: Delivery) -> TrackResult:
        self.calls += 1
        raise DeliveryError(delivery.event.event_id, "http_503", "later", retryable=True)


async def test_a_transport_of_the_old_contract_is_taken_as_one_attempt() -> None:
    errors: list[Exception] = []
    inner = OldStyle()
    transport = BackgroundTransport(inner, on_error=lambda d, exc: errors.append(exc))
    await transport.send(lead("u1"))
    await transport.flush()
    assert inner.calls == 1 and transport.stats.failed == 1 and transport.stats.retried == 0
    assert "gave up" not in str(errors[0])  # nothing was given up: it never retried here
    await transport.aclose()


class OneTry(Transport):
    """The new contract: ``attempt`` only; refuses the first two tries."""

    retry = FAST

    def __init__(self) -> None:
        self.tries = 0

    async def attempt(self, delivery: Delivery) -> TrackResult:
        self.tries += 1
        if self.tries <= 2:
            raise DeliveryError(delivery.event.event_id, "http_503", "later", retryable=True)
        return TrackResult("sent", delivery.event)


async def test_send_of_an_attempt_only_transport_retries_inline() -> None:
    transport = OneTry()
    stats = DeliveryStats()
    transport.stats = stats
    result = await transport.send(lead("u1"))
    assert result.status == "sent" and transport.tries == 3 and stats.retried == 2


async def test_a_transport_that_implements_neither_method_says_so() -> None:
    class Nothing(Transport):
        pass

    with pytest.raises(TypeError, match="Nothing must implement attempt"):
        await Nothing().send(lead("u1"))


def test_concurrency_is_the_one_name_and_the_old_names_still_work() -> None:
    assert BackgroundTransport(MemoryTransport(), concurrency=3).concurrency == 3
    assert HTTPTransport(KEY, concurrency=4).concurrency == 4
    with pytest.warns(DeprecationWarning, match=r"workers=\.\.\.\) is deprecated"):
        assert BackgroundTransport(MemoryTransport(), workers=2).concurrency == 2
    with pytest.raises(TypeError, match="max_connections"):
        HTTPTransport(KEY, max_connections=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="not both"):
        BackgroundTransport(MemoryTransport(), workers=2, concurrency=2)


def test_layers_read_retry_and_timeout_from_the_transport_contract() -> None:
    http = HTTPTransport(KEY, timeout=3.0, retry=FAST)
    background = BackgroundTransport(http)
    assert (background.retry, background.timeout) == (FAST, 3.0)
    assert (MemoryTransport().retry, MemoryTransport().timeout) == (RetryPolicy(), 10.0)
