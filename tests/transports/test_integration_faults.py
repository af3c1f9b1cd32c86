"""Faults of the whole integration pause delivery; per-event answers stay final.

Through real sockets: the fake provider under uvicorn, behind a small ASGI wrapper that answers
401 (or HTML, or a wrong path) for a while. Counts sent, delivered, reported and lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution import (
    DUB,
    BackgroundTransport,
    Delivery,
    DeliveryError,
    HTTPTransport,
    LeadEvent,
    RetryPolicy,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports import DeliveryRecord, IntegrationError
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=30)


def lead(user: str, click_id: str = "clk1") -> Delivery:
    event = LeadEvent(click_id=click_id, event_name="Sign up", customer_external_id=user)
    return Delivery(event, DUB)


class Outage:
    """An ASGI wrapper: answers ``status`` (with ``body``) to tracking calls until ``until``
    (a monotonic time), then passes every request on to ``inner``."""

    def __init__(self, inner: Any, status: int, body: bytes, content_type: bytes) -> None:
        self.inner = inner
        self.status, self.body, self.content_type = status, body, content_type
        self.until = float("inf")
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or time.monotonic() >= self.until:
            await self.inner(scope, receive, send)
            return
        self.refused += 1
        headers = [(b"content-type", self.content_type)]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture
def outage(provider: FakeProvider) -> Iterator[tuple[Outage, str]]:
    wrapper = Outage(provider, 401, b'{"error": {"code": "unauthorized"}}', b"application/json")
    with serve_in_thread(wrapper) as url:
        yield wrapper, url


async def test_a_401_outage_pauses_then_delivers_everything(
    provider: FakeProvider, outage: tuple[Outage, str], caplog: Any
) -> None:
    wrapper, url = outage
    records: list[DeliveryRecord] = []
    reported: list[str] = []
    transport = BackgroundTransport(
        HTTPTransport(KEY, base_url=url, retry=FAST),
        pause_interval=0.2,
        on_error=lambda d, exc: reported.append(d.event.event_id),
        on_drop=lambda d, reason: reported.append(d.event.event_id),
    )
    transport.stats.subscribe(records.append)
    await transport.start()
    sent = [(await transport.send(lead(f"u{i}"))).event_id for i in range(10)]
    deadline = time.monotonic() + 10
    while not transport.paused:
        assert time.monotonic() < deadline, "never paused"
        await asyncio.sleep(0.01)
    assert transport.pending == 10  # held, none discarded
    wrapper.until = time.monotonic() + 0.5  # the key works again in half a second
    await transport.flush(timeout=30)
    await transport.aclose()
    delivered = {lead["customerExternalId"] for lead in provider.leads()}
    lost = {f"u{i}" for i in range(10)} - delivered
    assert (len(sent), len(delivered), len(reported), lost) == (10, 10, 0, set())
    stats = transport.stats
    assert (stats.sent, stats.failed, stats.dropped, stats.queued) == (10, 0, 0, 10)
    assert wrapper.refused >= 1
    assert sorted(provider.count_by_idempotency_key().values()) == [1] * 10
    kinds = [r.kind for r in records]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1
    assert any(r.kind == "attempt" and r.status_code == 401 for r in records)
    paused = [r for r in caplog.records if r.levelno == logging.ERROR and "paused" in r.message]
    assert len(paused) == 1 and "401" in paused[0].message and "events held" in paused[0].message


async def test_an_inline_send_raises_an_integration_fault_at_once(
    outage: tuple[Outage, str],
) -> None:
    wrapper, url = outage
    transport = HTTPTransport(KEY, base_url=url, retry=FAST)
    started = time.monotonic()
    with pytest.raises(IntegrationError) as caught:
        await transport.send(lead("u1"))
    await transport.aclose()
    assert time.monotonic() - started < 10  # a bound on blocking, not a speed claim
    error = caught.value
    assert error.integration and not error.retryable
    assert (error.code, error.status_code, wrapper.refused) == ("unauthorized", 401, 1)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "code"),
    [
        (404, b"<html>Not Found</html>", b"text/html", "wrong_path"),
        (404, b'{"detail": "Not Found"}', b"application/json", "wrong_path"),
        (
            403,
            b'{"error": {"code": "forbidden", "message": "no"}}',
            b"application/json",
            "forbidden",
        ),
        (308, b"", b"text/plain", "redirect"),
    ],
)
async def test_wrong_paths_forbidden_and_redirects_are_integration_faults(
    provider: FakeProvider, status: int, body: bytes, content_type: bytes, code: str
) -> None:
    with serve_in_thread(Outage(provider, status, body, content_type)) as url:
        transport = HTTPTransport(KEY, base_url=url, retry=FAST)
        with pytest.raises(DeliveryError) as caught:
            await transport.send(lead("u1"))
        await transport.aclose()
    assert getattr(caught.value, "integration", False) and caught.value.code == code


async def test_a_click_not_found_is_final_for_the_event_not_a_pause(url: str) -> None:
    with serve_in_thread(FakeProvider("dub", api_key=KEY, known_clicks={"c1"})) as fake_url:
        errors: list[Exception] = []
        transport = BackgroundTransport(
            HTTPTransport(KEY, base_url=fake_url, retry=FAST),
            on_error=lambda d, exc: errors.append(exc),
        )
        await transport.start()
        try:
            await transport.send(lead("u1", click_id="unknown"))
            await transport.flush(timeout=10)
        finally:
            await transport.aclose()
    [error] = errors
    assert isinstance(error, DeliveryError) and error.status_code == 404
    assert error.code == "click_not_found" and not getattr(error, "integration", False)
    assert not transport.paused and transport.stats.failed == 1


@pytest.mark.parametrize("base_url", ["api.dub.co", "ftp://api.dub.co"])
async def test_an_unusable_url_is_final_never_retried(base_url: str) -> None:
    transport = HTTPTransport(KEY, base_url=base_url, retry=FAST)
    with pytest.raises(DeliveryError) as caught:
        await transport.send(lead("u1"))
    await transport.aclose()
    assert not caught.value.retryable and caught.value.code == "unsupported_protocol"
    assert transport.stats.retried == 0
