"""``asgi_attribution.metrics``: the real OpenTelemetry SDK sees what the tracker does.

The tracker delivers to the fake provider over a socket; the SDK's in-memory reader and span
exporter show the counters, the queue depth, one duration per attempt and one span each.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_attribution import DeliveryStats, RetryPolicy, Tracker
from asgi_attribution.metrics import (
    DELIVERY_DURATION,
    EVENTS,
    PACE_WAIT,
    QUEUE_DEPTH,
    RATE_LIMITED,
    Instrumentation,
    instrument,
)
from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

from .support.asgi import KEY

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not hasattr(DeliveryStats, "subscribe"),
        reason="needs the observer hook of DeliveryStats (stats.subscribe), transports/observe.py",
    ),
]


class Otel:
    """An SDK meter provider with an in-memory reader, and a tracer provider with an exporter."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:  # nothing recorded yet
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def counts(self, name: str) -> dict[tuple[Any, ...], int]:
        """Sums by sorted attribute items (the non-zero ones)."""
        return {
            tuple(sorted(p.attributes.items())): p.value for p in self.points(name) if p.value != 0
        }


@pytest.fixture
def otel() -> Iterator[Otel]:
    telemetry = Otel()
    yield telemetry
    telemetry.meter_provider.shutdown()
    telemetry.tracer_provider.shutdown()


def tracker_for(url: str, attempts: int = 40) -> Tracker:
    retry = RetryPolicy(max_attempts=attempts, initial_backoff=0.01, max_backoff=0.05)
    return Tracker("dub", api_key=KEY, base_url=url, retry=retry)


def outcome(kind: str, name: str) -> tuple[tuple[str, str], ...]:
    return (("kind", kind), ("outcome", name), ("provider", "dub"))


async def test_a_lead_delivered_after_one_503_moves_every_instrument(
    provider: FakeProvider, url: str, otel: Otel
) -> None:
    provider.faults = Faults(fail_first=1)
    tracker = tracker_for(url)
    instrumentation = instrument(
        tracker, meter_provider=otel.meter_provider, tracer_provider=otel.tracer_provider
    )
    assert instrumentation.enabled
    async with tracker:
        await tracker.track_lead(click_id="clk_1", event_name="Sign up", customer_external_id="u")
        depth = otel.counts(QUEUE_DEPTH)
    assert len(provider.leads()) == 1
    assert otel.counts(EVENTS) == {
        outcome("lead", "queued"): 1,
        outcome("lead", "retried"): 1,
        outcome("lead", "sent"): 1,
    }
    # While queued the depth read 1 or 0 (the worker may already have taken it); after: 0.
    assert sum(depth.values()) in (0, 1)
    assert [p.value for p in otel.points(QUEUE_DEPTH)] == [0]
    durations = {
        p.attributes["http.response.status_code"]: p for p in otel.points(DELIVERY_DURATION)
    }
    assert sorted(durations) == [200, 503]
    assert all(p.count == 1 and p.sum > 0 for p in durations.values())
    spans = otel.spans.get_finished_spans()
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 200]
    assert [s.status.is_ok for s in spans] == [False, True]
    assert {s.name for s in spans} == {"asgi_attribution.delivery"}
    instrumentation.close()


async def test_duplicates_and_failures_are_outcomes_too(
    provider: FakeProvider, url: str, otel: Otel
) -> None:
    tracker = tracker_for(url, attempts=2)
    instrument(tracker, meter_provider=otel.meter_provider)
    async with tracker:
        for _ in range(2):  # the same lead twice: Dub answers 200 and records it once
            await tracker.track_lead(click_id="c1", event_name="Sign up", customer_external_id="u")
            await tracker.flush()
        provider.faults = Faults(error_rate=1.0)
        await tracker.track_sale(customer_external_id="u", amount=100)
        await tracker.flush(5)
    counts = otel.counts(EVENTS)
    assert counts[outcome("lead", "sent")] == 2
    assert counts[outcome("lead", "duplicate")] == 1
    assert counts[outcome("sale", "failed")] == 1
    assert counts[outcome("sale", "retried")] == 1
    assert {p.value for p in otel.points(QUEUE_DEPTH)} == {0}  # per kind, all finished


async def test_close_stops_recording(provider: FakeProvider, url: str, otel: Otel) -> None:
    tracker = tracker_for(url)
    instrument(tracker, meter_provider=otel.meter_provider).close()
    async with tracker:
        await tracker.track_lead(click_id="c1", event_name="Sign up", customer_external_id="u")
    assert otel.counts(EVENTS) == {}


def test_without_opentelemetry_it_does_nothing() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if it were not installed
        "from asgi_attribution import MemoryTransport, Tracker\n"
        "from asgi_attribution.metrics import instrument\n"
        "print(instrument(Tracker(transport=MemoryTransport())).enabled)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_metrics_does_not_import_opentelemetry() -> None:
    code = "import sys, asgi_attribution.metrics; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_disabled_instrumentation_can_be_closed() -> None:
    Instrumentation(Tracker()).close()


async def test_the_pace_wait_and_the_429s_met_are_recorded(otel: Otel) -> None:
    """The app's own calls spend the key's window (4 per 2 s): the tracker meets one 429,
    then waits for the pace; the metrics read what ``tracker.stats`` counts."""
    import httpx

    provider = FakeProvider("dub", rate_limit="4/2s")
    key = f"dub_metrics_{uuid.uuid4().hex[:12]}"  # a pace of its own
    with serve_in_thread(provider) as url:
        tracker = Tracker("dub", api_key=key, base_url=url, rate_limit_share=1.0)
        instrument(tracker, meter_provider=otel.meter_provider)
        if time.time() % 2 > 0.4:  # the fake's windows are Unix-time aligned: at one's start
            time.sleep(2 - time.time() % 2 + 0.02)
        async with httpx.AsyncClient() as other:
            for _ in range(4):
                await other.post(
                    f"{url}/track/lead",
                    json={"clickId": "c", "eventName": "x", "customerExternalId": uuid.uuid4().hex},
                    headers={"Authorization": f"Bearer {key}"},
                )
        sent = 6
        async with tracker:
            for i in range(sent):
                await tracker.track_lead(
                    click_id="c", event_name="Sign up", customer_external_id=f"m{i}"
                )
            await tracker.flush(60)
        stats = tracker.stats
    mine = {r.idempotency_key for r in provider.accepted} - {None}
    assert len(mine) == sent and stats.failed == stats.dropped == 0  # none lost, no dup
    rejected = provider.limiter.rejected  # type: ignore[union-attr]
    assert rejected == stats.rate_limited >= 1
    assert sum(otel.counts(RATE_LIMITED).values()) == stats.rate_limited
    waited = sum(p.value for p in otel.points(PACE_WAIT))
    assert stats.pace_wait > 0 and waited == pytest.approx(stats.pace_wait)
    assert {a for key_ in otel.counts(PACE_WAIT) for a in key_} >= {("provider", "dub")}
