"""Issue 29's papercuts, each through the real thing (a fake provider over a socket, real
clients): each test here failed before its fix.

- a callback with the wrong parameter count fails at ``Tracker(...)``, naming the signature;
- no "delivery resumed" line unless delivery resumed (a shutdown without an API key);
- a drain at shutdown ends on an INFO line "delivered N events in X s; nothing left", and its
  opening line says it drains (a real loss is still an ERROR naming each id);
- the documented job recipe (``sync.track_lead(None, tracker=..., click_id=...)``) logs no
  WARNING to start the tracker;
- Django's test ``Client`` and ``AsyncClient`` are told they go around ASGI middleware;
- ``checkout_session_params(request, mode=...)`` returns ``mode`` (given once).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from asgi_attribution import (
    Attribution,
    MemoryTransport,
    Tracker,
    get_attribution,
    sync,
)
from asgi_attribution.stripe import checkout_session_params
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports import Delivery, TrackResult

from .support.asgi import KEY

pytestmark = pytest.mark.anyio

LOGGER = "asgi_attribution"


# -- callbacks: checked at construction ------------------------------------------------------


class Recorder:
    """Bound methods are callbacks too."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    def on_delivered(self, delivery: Delivery, result: TrackResult) -> None:
        self.delivered.append(delivery.event.event_id)


def one(delivery: Delivery) -> None: ...


def three(delivery: Delivery, result: TrackResult, extra: int) -> None: ...


def keyword_only(delivery: Delivery, result: TrackResult, *, must: int) -> None: ...


@pytest.mark.parametrize(
    ("name", "callback", "signature"),
    [
        ("on_delivered", one, "on_delivered(delivery, result)"),
        ("on_delivered", three, "on_delivered(delivery, result)"),
        ("on_delivered", keyword_only, "on_delivered(delivery, result)"),
        ("on_error", lambda delivery: None, "on_error(delivery, exc)"),
        ("on_drop", functools.partial(one, "x"), "on_drop(delivery, reason)"),
        ("on_drop", lambda: None, "on_drop(delivery, reason)"),
    ],
)
def test_a_callback_with_the_wrong_parameters_fails_at_construction(
    name: str, callback: Any, signature: str
) -> None:
    with pytest.raises(TypeError) as raised:
        Tracker("dub", api_key=KEY, **{name: callback})
    assert f"Tracker({name}=...) is called as {signature}" in str(raised.value)


async def async_callback(delivery: Delivery, result: TrackResult) -> None: ...


@pytest.mark.parametrize(
    "callback",
    [
        lambda delivery, result: None,
        lambda *args: None,
        lambda delivery, result, extra=1: None,
        functools.partial(three, extra=2),
        functools.partial(lambda tag, delivery, result: None, "tag"),
        async_callback,
        Recorder().on_delivered,
        print,
    ],
)
def test_callbacks_that_bind_are_accepted(callback: Any) -> None:
    for name in ("on_delivered", "on_error", "on_drop"):
        assert Tracker("dub", api_key=KEY, **{name: callback}).transport is not None


async def test_a_bound_method_callback_is_called_for_each_delivery(
    provider: FakeProvider, url: str
) -> None:
    recorder = Recorder()
    async with Tracker("dub", api_key=KEY, base_url=url, on_delivered=recorder.on_delivered) as t:
        results = [
            await t.track_lead(click_id=f"clk{i}", event_name="Sign up", customer_external_id="u")
            for i in range(3)
        ]
    sent = [result.event.event_id for result in results]
    assert sorted(recorder.delivered) == sorted(sent)
    assert sorted(provider.count_by_idempotency_key()) == sorted(sent)


# -- shutdown lines ---------------------------------------------------------------------------


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def tally(
    sent: set[str], delivered: dict[str, int], dropped: list[str], caplog: pytest.LogCaptureFixture
) -> dict[str, int]:
    """sent / delivered / duplicates / reported (ERROR line and on_drop, by id) / silently lost."""
    errors = " ".join(m for level, m in lines(caplog) if level >= logging.ERROR)
    reported = {i for i in sent if i in errors and i in dropped}
    return {
        "sent": len(sent),
        "delivered": len(set(delivered) & sent),
        "duplicates": sum(n - 1 for i, n in delivered.items() if i in sent),
        "reported": len(reported),
        "lost": len(sent - set(delivered) - reported),
    }


async def test_no_resumed_line_when_nothing_resumed(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DUB_API_KEY", raising=False)
    caplog.set_level(logging.INFO, LOGGER)
    dropped: list[str] = []
    tracker = Tracker(
        "dub",
        base_url=url,
        shutdown_timeout=2,
        on_drop=lambda d, r: dropped.append(d.event.event_id),
    )
    async with tracker:
        result = await tracker.track_lead(
            click_id="clk1", event_name="Sign up", customer_external_id="u"
        )
        await asyncio.sleep(0.2)  # the attempt meets "no API key": delivery pauses
    said = [message for _, message in lines(caplog)]
    assert not [m for m in said if "resumed" in m], said
    # Not delivered: reported by id at ERROR and to on_drop, never called "nothing left".
    counts = tally({result.event.event_id}, {}, dropped, caplog)
    assert counts == {"sent": 1, "delivered": 0, "duplicates": 0, "reported": 1, "lost": 0}
    assert not [m for m in said if "nothing left" in m]


async def test_a_drain_ends_on_a_closing_info_line(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.3)  # in flight when the drain starts
    async with Tracker("dub", api_key=KEY, base_url=url) as tracker:
        results = [
            await tracker.track_lead(
                click_id=f"clk{i}", event_name="Sign up", customer_external_id=f"u{i}"
            )
            for i in range(4)
        ]
    sent = {result.event.event_id for result in results}
    counts = tally(sent, provider.count_by_idempotency_key(), [], caplog)
    assert counts == {"sent": 4, "delivered": 4, "duplicates": 0, "reported": 0, "lost": 0}
    said = lines(caplog)
    [opening] = [(level, m) for level, m in said if m.startswith("shutting down")]
    assert "draining 4 events not yet delivered" in opening[1]
    assert all(event_id in opening[1] for event_id in sent)
    assert "not delivered" not in opening[1].replace("not yet delivered", "")
    level, last = said[-1]
    assert level == logging.INFO
    assert last.startswith("delivered 4 events in ") and last.endswith(" s; nothing left")


async def test_a_real_loss_still_reports_each_id_at_error(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    provider.faults = Faults(error_rate=1.0)  # every attempt fails: nothing is delivered
    dropped: list[str] = []
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        shutdown_timeout=0.5,
        on_drop=lambda delivery, reason: dropped.append(delivery.event.event_id),
    )
    async with tracker:
        result = await tracker.track_lead(
            click_id="clk1", event_name="Sign up", customer_external_id="u"
        )
    counts = tally({result.event.event_id}, provider.count_by_idempotency_key(), dropped, caplog)
    assert counts == {"sent": 1, "delivered": 0, "duplicates": 0, "reported": 1, "lost": 0}
    assert not [m for _, m in lines(caplog) if "nothing left" in m]


# -- the documented job recipe -----------------------------------------------------------------


def test_the_job_recipe_logs_no_warning(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    tracker = Tracker("dub", api_key=KEY, base_url=url)
    result = sync.track_lead(
        None, "Sign up", tracker=tracker, click_id="clk_job", customer_external_id="user_1"
    )
    assert result.status == "sent"
    assert list(provider.count_by_idempotency_key()) == [result.event.event_id]
    assert [m for level, m in lines(caplog) if level >= logging.WARNING] == []


async def test_an_unstarted_tracker_in_async_code_still_warns(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker("dub", api_key=KEY, base_url=url)
    await tracker.track_lead(click_id="clk1", event_name="Sign up", customer_external_id="u")
    assert any("is not started" in m for level, m in lines(caplog) if level == logging.WARNING)


# -- Django's test clients -----------------------------------------------------------------------


@pytest.fixture
def django_app() -> tuple[Any, MemoryTransport]:
    """The framework tests' Django app (views /signup, async, and /signup-sync) with a memory
    tracker; Django's settings are configured once per process, by that module."""
    pytest.importorskip("django")
    from tests.support import framework_apps

    memory = MemoryTransport()
    return framework_apps.django_app(Tracker("dub", transport=memory)), memory


def test_djangos_test_client_is_told_what_to_use(django_app: tuple[Any, MemoryTransport]) -> None:
    from django.test import Client

    with pytest.raises(RuntimeError) as raised:
        Client().post("/signup-sync?u=u1")
    message = str(raised.value)
    assert "Django's test Client and AsyncClient call the Django app directly" in message
    assert "httpx.ASGITransport(app=application)" in message
    assert django_app[1].events == []


async def test_djangos_async_client_is_not_told_to_add_the_middleware(
    django_app: tuple[Any, MemoryTransport],
) -> None:
    from django.test import AsyncClient

    with pytest.raises(RuntimeError) as raised:
        await AsyncClient().post("/signup?u=u1")
    message = str(raised.value)
    assert "around every ASGI or WSGI middleware" in message
    assert "add AttributionMiddleware" not in message
    # Through the wrapped ASGI app, as the message says, the middleware sees the request.
    app, memory = django_app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", cookies={"dub_id": "clk_dj"}
    ) as client:
        answer = (await client.post("/signup?u=u1")).json()
    assert answer == {"status": "sent"}
    assert [event.click_id for event in memory.events] == ["clk_dj"]  # type: ignore[attr-defined]


async def test_a_missing_middleware_is_still_named_for_other_clients() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            get_attribution(Request(scope))
        except RuntimeError as exc:
            body = str(exc).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        said = (await client.get("/")).text
    assert "add AttributionMiddleware to the app" in said


# -- Stripe Checkout's mode --------------------------------------------------------------------


def test_checkout_params_carry_the_mode_given_once() -> None:
    from asgi_attribution import DUB

    attributed = Request({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
    organic = Request({"type": "http", "asgi_attribution": Attribution(DUB)})
    payment = checkout_session_params(attributed, mode="payment")
    assert payment["mode"] == "payment" and payment["customer_creation"] == "always"
    assert checkout_session_params(organic)["mode"] == "subscription"

    def create(**kwargs: Any) -> dict[str, Any]:  # Stripe's Session.create takes keywords
        return kwargs

    with pytest.raises(TypeError, match="mode"):
        create(mode="subscription", **payment)  # type: ignore[misc]
