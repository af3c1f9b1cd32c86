"""Delivery at the provider's pace: the X-RateLimit-* headers of real answers (the fake provider
under uvicorn, with a small sliding window) space the requests of one API key.

Counts, not speed: 429s met (the fake's own count and ``stats.rate_limited``), attempts, what
was delivered; times only as lower bounds (a request held until a reset) or generous ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_attribution import DUB, HTTPTransport, LeadEvent, RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.testing.fake_provider import RateLimit
from asgi_attribution.transports import Delivery
from asgi_attribution.transports._pace import pace_for

from ..conftest import KEY

pytestmark = pytest.mark.anyio


def lead(user: str) -> Delivery:
    return Delivery(LeadEvent(click_id="c", event_name="Sign up", customer_external_id=user), DUB)


def new_key() -> str:
    return f"dub_pace_{uuid.uuid4().hex[:12]}"  # one pace per test: the registry is the process's


@pytest.fixture
def limited() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider("dub", rate_limit="4/2s")
    with serve_in_thread(provider) as url:
        yield provider, url


def bucket_start(window: float) -> None:
    """Sleep until just after the fake's window turns (its buckets are Unix-time aligned)."""
    into = time.time() % window
    if into > 0.2 * window:
        time.sleep(window - into + 0.02)


def accepted_ids(provider: FakeProvider) -> list[str]:
    return [r.idempotency_key or "" for r in provider.accepted]


async def test_remaining_zero_holds_the_next_attempt_until_the_reset(
    limited: tuple[FakeProvider, str],
) -> None:
    provider, url = limited
    key = new_key()
    http = HTTPTransport(key, base_url=url, retry=RetryPolicy(max_attempts=1), rate_limit_share=1)
    bucket_start(2.0)
    events = [lead(f"u{i}") for i in range(5)]
    for delivery in events[:4]:
        assert (await http.send(delivery)).status == "sent"
    state = pace_for(key, url).known()
    assert state is not None and state.limit == 4 and state.remaining == 0
    assert (await http.send(events[4])).status == "sent"
    after = time.time()
    await http.aclose()
    sent, rejected = len(events), provider.limiter.rejected  # type: ignore[union-attr]
    delivered = accepted_ids(provider)
    assert rejected == 0 and http.stats.rate_limited == 0  # held back, never refused
    assert after >= state.reset - 0.05  # the fifth left once the window turned
    assert http.stats.pace_wait > 0
    assert sorted(delivered) == sorted(d.event.event_id for d in events)
    assert len(delivered) == sent and len(set(delivered)) == sent  # no duplicate, none lost


async def test_a_429_does_not_consume_an_attempt(limited: tuple[FakeProvider, str]) -> None:
    """Another process (a second key user, unpaced) spends the budget: our one-attempt event
    meets a 429, waits for the reset and is delivered, still in its one attempt."""
    provider, url = limited
    key = new_key()
    bucket_start(2.0)
    import httpx

    async with httpx.AsyncClient() as other:  # the app's own calls on the key, spending it all
        for _ in range(4):
            answer = await other.post(
                f"{url}/track/lead",
                json={"clickId": "c", "eventName": "x", "customerExternalId": uuid.uuid4().hex},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 200
    http = HTTPTransport(key, base_url=url, retry=RetryPolicy(max_attempts=1), rate_limit_share=1)
    delivery = lead("mine")
    result = await http.send(delivery)  # would raise with max_attempts=1 if the 429 counted
    await http.aclose()
    assert result.status == "sent"
    assert provider.limiter.rejected == 1 and http.stats.rate_limited == 1  # type: ignore[union-attr]
    assert http.stats.retried == 0 and http.stats.failed == 0
    mine = [r for r in provider.accepted if r.idempotency_key == delivery.event.event_id]
    assert len(mine) == 1


async def test_the_first_burst_waits_for_the_first_answer(
    limited: tuple[FakeProvider, str],
) -> None:
    """A backlog on a key nothing is known of yet: one request goes first, the others wait
    for its answer's headers, so the burst never overruns the window (4 per 2 s)."""
    provider, url = limited
    key = new_key()
    http = HTTPTransport(key, base_url=url, rate_limit_share=1, concurrency=10)
    bucket_start(2.0)
    events = [lead(f"b{i}") for i in range(10)]
    results = await asyncio.gather(*(http.send(d) for d in events))
    await http.aclose()
    sent = len(events)
    delivered = accepted_ids(provider)
    rejected = provider.limiter.rejected  # type: ignore[union-attr]
    assert all(r.status == "sent" for r in results)
    assert sorted(delivered) == sorted(d.event.event_id for d in events)  # none lost
    assert len(set(delivered)) == sent  # no duplicate
    assert rejected == http.stats.rate_limited == 0  # no 429: the burst kept to the budget
    assert max(provider.limiter.peak_used.values()) <= 4  # type: ignore[union-attr]


async def test_two_trackers_on_one_key_share_one_budget(limited: tuple[FakeProvider, str]) -> None:
    provider, url = limited
    key = new_key()
    trackers = [
        Tracker("dub", api_key=key, base_url=url, rate_limit_share=1.0, concurrency=1)
        for _ in range(2)
    ]
    for tracker in trackers:
        await tracker.start()
    sent = 12  # three windows' worth
    ids: list[str] = []
    for i in range(sent):
        result = await trackers[i % 2].track_lead(
            click_id="c", event_name="Sign up", customer_external_id=f"u{i}"
        )
        ids.append(result.event_id or "")
    for tracker in trackers:
        await tracker.flush(timeout=60)
        await tracker.aclose()
    delivered = accepted_ids(provider)
    met = sum(t.stats.rate_limited for t in trackers)
    assert sorted(delivered) == sorted(ids) and len(set(delivered)) == sent  # none lost, no dup
    assert sum(t.stats.failed + t.stats.dropped for t in trackers) == 0
    # One pace for both, the first answer awaited before the rest: no 429 at all (processes
    # race for slots; two trackers of one process share every count).
    assert provider.limiter.rejected == met == 0  # type: ignore[union-attr]
    assert max(provider.limiter.peak_used.values()) <= 4  # type: ignore[union-attr]


async def test_the_share_is_honoured() -> None:
    provider = FakeProvider("dub", rate_limit="10/2s")
    with serve_in_thread(provider) as url:
        key = new_key()
        http = HTTPTransport(key, base_url=url, rate_limit_share=0.5)
        bucket_start(2.0)
        events = [lead(f"s{i}") for i in range(10)]
        results = [await http.send(events[0])]  # the first answer tells the budget
        results += await asyncio.gather(*(http.send(d) for d in events[1:]))
        await http.aclose()
    assert all(r.status == "sent" for r in results)
    assert len(set(accepted_ids(provider))) == len(events)
    # Of each window's 10, delivery took half at most, as the provider counts it (the
    # sliding window weighs the previous bucket in; with a share of 1.0 all 10 would be).
    assert max(provider.limiter.peak_used.values()) <= 5  # type: ignore[union-attr]
    assert provider.limiter.rejected == 0  # type: ignore[union-attr]
    assert http.stats.pace_wait > 0


async def test_no_pacing_without_the_headers(
    provider: FakeProvider, url: str
) -> None:  # the module's fake: no rate limit
    key = KEY
    http = HTTPTransport(key, base_url=url)
    # The first backlog's requests wait for the first answer (it might state a budget) ...
    results = await asyncio.gather(*(http.send(lead(f"n{i}")) for i in range(20)))
    first = http.stats.pace_wait
    # ... which had no headers: from then on nothing waits.
    results += await asyncio.gather(*(http.send(lead(f"m{i}")) for i in range(20)))
    await http.aclose()
    assert all(r.status == "sent" for r in results)
    assert len(set(accepted_ids(provider))) == 40
    assert http.stats.pace_wait == first < 19 * 10  # bounded by the first answer's time
    assert pace_for(key, url).known() is None


@pytest.mark.parametrize("skew", [-30.0, 7200.0])
async def test_a_reset_in_the_past_or_far_ahead_is_clamped_and_logged_once(
    skew: float, caplog: pytest.LogCaptureFixture
) -> None:
    provider = FakeProvider("dub", rate_limit=RateLimit(3, 1.0, skew=skew))
    with serve_in_thread(provider) as url:
        key = new_key()
        http = HTTPTransport(key, base_url=url, rate_limit_share=1)
        with caplog.at_level(logging.INFO, logger="asgi_attribution"):
            started = time.monotonic()
            # Far ahead, within the limit only: a reset read as a minute ahead is still a wait.
            count = 8 if skew < 0 else 3
            results = [await http.send(lead(f"k{i}")) for i in range(count)]
            took = time.monotonic() - started
        await http.aclose()
    assert all(r.status == "sent" for r in results)
    assert len(set(accepted_ids(provider))) == count
    state = pace_for(key, url).known()
    assert state is not None and state.reset <= time.time() + 61  # clamped, not two hours
    warned = [r for r in caplog.records if "X-RateLimit-Reset is" in r.getMessage()]
    assert len(warned) == 1
    assert took < 300  # generous: never a wait of the stated two hours


async def test_holding_back_is_logged_once_when_it_starts_and_once_when_it_stops(
    limited: tuple[FakeProvider, str], caplog: pytest.LogCaptureFixture
) -> None:
    provider, url = limited
    key = new_key()
    http = HTTPTransport(key, base_url=url, rate_limit_share=1)
    bucket_start(2.0)
    with caplog.at_level(logging.INFO, logger="asgi_attribution"):
        await asyncio.gather(*(http.send(lead(f"h{i}")) for i in range(10)))
        await asyncio.sleep(4.5)  # quiet: the window turned twice
        await http.send(lead("after"))
    await http.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("holding events back to stay" in line for line in lines) == 1
    assert sum("no longer holding events back" in line for line in lines) == 1
    assert len(set(accepted_ids(provider))) == 11


def test_rate_limit_share_outside_0_1_raises_naming_the_option() -> None:
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"Tracker\(rate_limit_share=...\)"):
            Tracker("dub", api_key="k", rate_limit_share=bad)
    with pytest.raises(TypeError, match=r"rate_limit_share"):
        Tracker("dub", api_key="k", rate_limit_share="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"HTTPTransport\(rate_limit_share=...\)"):
        HTTPTransport("k", rate_limit_share=2)


def test_outbox_status_shows_what_this_process_knows_of_the_pace(
    limited: tuple[FakeProvider, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asgi_attribution._cli.outbox import main

    provider, url = limited
    key = new_key()
    outbox = str(tmp_path / "events.db")
    http = HTTPTransport(key, base_url=url, rate_limit_share=1)

    async def send() -> None:
        async with Tracker("dub", api_key=key, outbox=outbox, deliver=False):
            pass  # an empty outbox file
        assert (await http.send(lead("st"))).status == "sent"
        await http.aclose()

    asyncio.run(send())
    name = pace_for(key, url).name
    assert main(["status", "--path", outbox]) == 0
    lines = capsys.readouterr().out.splitlines()
    mine = [line for line in lines if line.startswith(f"pace: {name}: ")]
    assert len(mine) == 1 and "limit 4, remaining 3, reset in " in mine[0]
    assert key not in "\n".join(lines)  # the key's hash only
    assert main(["status", "--path", outbox, "--json"]) == 0
    pace = json.loads(capsys.readouterr().out)["pace"][name]
    assert (pace["limit"], pace["remaining"]) == (4, 3)
    assert time.time() - 1 <= pace["reset"] <= time.time() + 2.5  # the 2 s window's end
    assert len(provider.accepted) == 1
