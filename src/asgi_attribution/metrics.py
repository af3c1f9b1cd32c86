"""OpenTelemetry metrics and traces of a tracker's deliveries: ``instrument(tracker)``.

``pip install "asgi-attribution[otel]"`` (``opentelemetry-api`` only; the app brings its SDK and
exporters). Without it :func:`instrument` does nothing, and this module never imports
OpenTelemetry before it is called. It subscribes to the tracker's counters
(``tracker.stats.subscribe``) and records:

- ``asgi_attribution.events`` (counter): every event by ``provider``, ``kind`` (``lead``,
  ``sale``, ``customer``) and ``outcome``: ``queued``, ``sent``, ``retried`` (one per retry),
  ``failed``, ``dropped``, and of the sent, ``duplicate`` and ``not_recorded`` (answered 2xx,
  recorded nothing);
- ``asgi_attribution.queue.depth`` (up-down counter): events accepted by this process and not
  yet sent, failed or dropped (for an outbox shared between processes, watch its size instead);
- ``asgi_attribution.delivery.duration`` (histogram, seconds): one per attempt, with
  ``http.response.status_code`` (or ``error.type`` when no answer came);
- ``asgi_attribution.delivery.paused`` (up-down counter): 1 while delivery is paused by a fault
  of the whole integration (a revoked key, a wrong URL);
- ``asgi_attribution.delivery.pace_wait`` (counter, seconds): the time requests waited for the
  API key's rate limit (``tracker.stats.pace_wait``; :mod:`.transports._pace`);
- ``asgi_attribution.delivery.rate_limited`` (counter): the 429s met
  (``tracker.stats.rate_limited``); both by ``provider`` and ``kind``;
- a span per delivery attempt (``asgi_attribution.delivery``, kind CLIENT) on ``tracer_provider``
  (default: the global one, which records nothing until the app sets one).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ._tracker import Tracker

__all__ = [
    "DELIVERY_DURATION",
    "EVENTS",
    "OUTCOMES",
    "PACE_WAIT",
    "PAUSED",
    "QUEUE_DEPTH",
    "RATE_LIMITED",
    "Instrumentation",
    "instrument",
]


if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .transports._base import DeliveryRecord

EVENTS = "asgi_attribution.events"

QUEUE_DEPTH = "asgi_attribution.queue.depth"

DELIVERY_DURATION = "asgi_attribution.delivery.duration"

PAUSED = "asgi_attribution.delivery.paused"

PACE_WAIT = "asgi_attribution.delivery.pace_wait"

RATE_LIMITED = "asgi_attribution.delivery.rate_limited"

#: The ``outcome`` attribute values of ``asgi_attribution.events``.
OUTCOMES = ("queued", "sent", "retried", "failed", "dropped", "duplicate", "not_recorded")

_FINAL = frozenset({"sent", "failed", "dropped"})

# Seconds: from a local provider (milliseconds) to an attempt that hits the 10 s timeout.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_SCOPE = "asgi_attribution"


class Instrumentation:
    """What :func:`instrument` installed on a tracker; :meth:`close` takes it off again.

    ``enabled`` is False when OpenTelemetry is not installed (nothing is recorded).

    Example:
        >>> instrumentation = Instrumentation(Tracker("dub", transport=MemoryTransport()))
        >>> instrumentation.enabled
        False
        >>> instrumentation.close()
    """

    def __init__(
        self,
        tracker: Tracker,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.tracker = tracker
        self.enabled = meter_provider is not None
        self._queued: set[str] = set()  # ids accepted and not yet finished, for the depth
        self._lock = threading.Lock()  # observers run in whichever thread did the work
        self._tracer: Any = None
        if meter_provider is None:
            return
        from . import __version__

        meter = meter_provider.get_meter(_SCOPE, __version__)
        self._events = meter.create_counter(
            EVENTS, unit="{event}", description="Events tracked, by outcome"
        )
        self._depth = meter.create_up_down_counter(
            QUEUE_DEPTH, unit="{event}", description="Events accepted and not yet finished"
        )
        self._paused = meter.create_up_down_counter(
            PAUSED, unit="{pause}", description="1 while delivery is paused by an integration fault"
        )
        self._pace_wait = meter.create_counter(
            PACE_WAIT, unit="s", description="Time requests waited for the API key's rate limit"
        )
        self._rate_limited = meter.create_counter(
            RATE_LIMITED, unit="{response}", description="429 answers met (rate limited)"
        )
        try:
            self._duration = meter.create_histogram(
                DELIVERY_DURATION,
                unit="s",
                description="Duration of one delivery attempt",
                explicit_bucket_boundaries_advisory=_BUCKETS,
            )
        except TypeError:  # opentelemetry-api < 1.23 takes no advisory buckets
            self._duration = meter.create_histogram(
                DELIVERY_DURATION, unit="s", description="Duration of one delivery attempt"
            )
        if tracer_provider is not None:
            self._tracer = tracer_provider.get_tracer(_SCOPE, __version__)
        tracker.stats.subscribe(self)

    def close(self) -> None:
        """Stop recording (unsubscribe from the tracker); idempotent."""
        if self.enabled:
            self.tracker.stats.unsubscribe(self)

    def __call__(self, record: DeliveryRecord) -> None:
        """Record one observer record (called by ``tracker.stats``)."""
        kind = record.kind
        attributes: dict[str, str | int] = {
            "provider": record.provider or self.tracker.provider.name
        }
        if record.event_kind is not None:
            attributes["kind"] = record.event_kind
        if kind == "attempt":
            self._attempt(record, attributes)
        elif kind == "paced":
            self._pace_wait.add(record.duration or 0.0, attributes)
        elif kind == "rate_limited":
            self._rate_limited.add(1, attributes)
        elif kind in ("paused", "resumed"):
            self._paused.add(1 if kind == "paused" else -1, {"provider": attributes["provider"]})
        elif kind in OUTCOMES:
            self._events.add(1, {**attributes, "outcome": kind})
            self._move_depth(record, attributes)

    def _move_depth(self, record: DeliveryRecord, attributes: dict[str, str | int]) -> None:
        event_id = record.event_id
        if event_id is None:
            return
        with self._lock:
            if record.kind == "queued":
                self._queued.add(event_id)
                change = 1
            elif record.kind in _FINAL and event_id in self._queued:
                self._queued.discard(event_id)
                change = -1
            else:
                return  # sent inline, never queued; or a retry
        self._depth.add(change, attributes)

    def _attempt(self, record: DeliveryRecord, attributes: dict[str, str | int]) -> None:
        if record.status_code is not None:
            attributes["http.response.status_code"] = record.status_code
        else:
            attributes["error.type"] = record.reason or "no_response"
        duration = record.duration or 0.0
        self._duration.record(duration, attributes)
        if self._tracer is not None:
            self._span(record, attributes, duration)

    def _span(
        self, record: DeliveryRecord, attributes: dict[str, str | int], duration: float
    ) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end = time.time_ns()
        span = self._tracer.start_span(
            "asgi_attribution.delivery",
            kind=SpanKind.CLIENT,
            attributes={**attributes, "asgi_attribution.event_id": record.event_id or ""},
            start_time=end - int(duration * 1e9),
        )
        status = record.status_code
        if status is None or status >= 400:
            span.set_status(Status(StatusCode.ERROR, record.reason or f"HTTP {status}"))
        span.end(end_time=end)


def instrument(
    tracker: Tracker,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Record ``tracker``'s deliveries as OpenTelemetry metrics (and spans, per attempt).

    ``meter_provider`` and ``tracer_provider`` default to the global ones. Without
    ``opentelemetry-api`` installed this does nothing (``enabled`` is False). Call it once per
    tracker, at startup, before events are tracked.

    Example:
        >>> from opentelemetry.sdk.metrics import MeterProvider
        >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        >>> reader = InMemoryMetricReader()
        >>> tracker = Tracker("dub", transport=MemoryTransport())
        >>> instrument(tracker, meter_provider=MeterProvider(metric_readers=[reader])).enabled
        True
    """
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return Instrumentation(tracker)
    return Instrumentation(
        tracker,
        meter_provider if meter_provider is not None else metrics.get_meter_provider(),
        tracer_provider if tracer_provider is not None else trace.get_tracer_provider(),
    )
