"""``capture_events`` and the ``attribution_events`` fixture, through real trackers and a real
pytest run of a test that uses the fixture (the plugin is found through its entry point)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from asgi_attribution import MemoryTransport, Tracker
from asgi_attribution._tracker import transport_overrides
from asgi_attribution.testing import CapturedEvents, capture_events

pytest_plugins = ["pytester"]


async def lead(tracker: Tracker, user: str) -> None:
    await tracker.track_lead(click_id="clk", event_name="Sign up", customer_external_id=user)


def test_a_capture_takes_every_trackers_events_and_nests() -> None:
    own = MemoryTransport()
    tracker = Tracker("dub", transport=own)
    with capture_events() as outer:
        asyncio.run(lead(tracker, "u1"))
        with capture_events() as inner:
            asyncio.run(lead(tracker, "u2"))
        asyncio.run(lead(tracker, "u3"))
    asyncio.run(lead(tracker, "u4"))  # the capture is closed: the tracker's own transport
    assert [e.customer_external_id for e in outer.leads] == ["u1", "u3"]
    assert [e.customer_external_id for e in inner.leads] == ["u2"]
    assert [e.event_id for e in own.events] == [own.deliveries[0].event.event_id]
    assert len(outer) == 2 and list(outer) == outer.leads and outer[1] is outer.leads[1]
    assert outer.sales == [] and outer.customers == []
    assert transport_overrides.current is None


def test_a_capture_sees_events_tracked_from_another_thread() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with capture_events() as events:
        thread = threading.Thread(target=lambda: asyncio.run(lead(tracker, "t1")))
        thread.start()
        thread.join()
    assert [e.customer_external_id for e in events.leads] == ["t1"]


def test_a_capture_ends_when_its_block_raises() -> None:
    with pytest.raises(RuntimeError), capture_events():
        raise RuntimeError("boom")
    assert transport_overrides.current is None


def test_the_fixture_in_a_real_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio

        from asgi_attribution import MemoryTransport, Tracker

        def test_signup(attribution_events):
            tracker = Tracker("dub", transport=MemoryTransport())
            asyncio.run(
                tracker.track_lead(
                    click_id="abc123", event_name="Sign up", customer_external_id="u1"
                )
            )
            assert [e.click_id for e in attribution_events.leads] == ["abc123"]

        def test_each_test_gets_a_fresh_capture(attribution_events):
            assert len(attribution_events) == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_captured_events_is_a_memory_transport() -> None:
    assert issubclass(CapturedEvents, MemoryTransport)


@pytest.mark.parametrize(
    ("options", "started", "expected"),
    [
        ({}, True, ("queued", False, False)),  # the lifespan's background queue
        ({}, False, ("sent", False, True)),  # nobody started it: inline
        ({"background": False}, True, ("sent", False, True)),
        ({"outbox": "events.db"}, True, ("queued", True, True)),
    ],
    ids=["background", "unowned", "inline", "outbox"],
)
def test_captured_results_are_what_the_tracker_would_return(
    options: dict[str, object],
    started: bool,
    expected: tuple[str, bool, bool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker("dub", api_key="k", base_url="http://127.0.0.1:9", **options)  # type: ignore[arg-type]

    async def track() -> tuple[str, bool, bool]:
        if started:
            await tracker.start()  # as the app's lifespan would
        try:
            result = await tracker.track_lead(
                click_id="clk", event_name="Sign up", customer_external_id="u1"
            )
        finally:
            await tracker.aclose()
        return result.status, result.durable, result.accepted

    with capture_events() as events:
        assert asyncio.run(track()) == expected
    assert [e.customer_external_id for e in events.leads] == ["u1"]
