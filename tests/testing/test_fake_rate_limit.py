"""The fake provider's rate limit through real requests (uvicorn, httpx): Upstash's sliding
window per API key, its headers on every answer, 429 with ``Retry-After`` over the limit.

The fake's windows are buckets aligned on Unix time, so each test starts at a bucket's start
and leaves generous room around the times it relies on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.testing.fake_provider import RateLimit
from asgi_attribution.testing.fake_provider._ratelimit import SlidingWindow

WINDOW = 2.0


@pytest.fixture
def limited() -> Iterator[tuple[FakeProvider, httpx.Client]]:
    provider = FakeProvider("dub", rate_limit=f"4/{WINDOW:g}s")
    with serve_in_thread(provider) as url, httpx.Client(base_url=url) as client:
        yield provider, client


def new_key() -> str:
    return f"dub_fake_rl_{uuid.uuid4().hex[:12]}"


def lead(client: httpx.Client, key: str, body: object = None) -> httpx.Response:
    payload = (
        body
        if body is not None
        else {
            "clickId": "c",
            "eventName": "Sign up",
            "customerExternalId": uuid.uuid4().hex,
        }
    )
    return client.post(
        "/track/lead",
        json=payload,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
    )


def at(into: float) -> float:
    """Sleep until ``into`` (a fraction) of the next bucket; return that bucket's start."""
    now = time.time()
    start = now - now % WINDOW + WINDOW
    time.sleep(start + into * WINDOW - now)
    return start


def until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def limit_headers(answer: httpx.Response) -> tuple[int, int, int]:
    h = answer.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


def test_every_answer_carries_the_headers_and_the_fifth_is_a_429(
    limited: tuple[FakeProvider, httpx.Client],
) -> None:
    provider, client = limited
    key = new_key()
    at(0.02)
    answers = [lead(client, key) for _ in range(3)]
    answers.append(lead(client, key, body={"clickId": "c"}))  # invalid, still counted
    over = lead(client, key)
    sent = len(answers) + 1
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].status_code in (400, 422)
    assert [limit_headers(a)[:2] for a in answers] == [(4, 3), (4, 2), (4, 1), (4, 0)]
    reset = limit_headers(answers[0])[2]
    assert reset > 1e12  # a Unix time in milliseconds, as Dub sends it
    assert time.time() * 1000 < reset <= (time.time() + WINDOW) * 1000
    assert {limit_headers(a)[2] for a in answers} == {reset}  # one bucket
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["retry-after"] == str(reset)  # the same value, in ms
    assert limit_headers(over) == (4, 0, reset)
    assert provider.limiter is not None
    assert provider.limiter.rejected == 1 and provider.limiter.taken == sent - 1
    # Delivered: the three valid leads; reported to the client: the 4xx and the 429 (refused
    # before the fake handles a request, so not among its handled ones).
    assert len(provider.accepted) == 3
    assert len(provider.requests) == sent - 1


def test_each_key_has_its_own_window(limited: tuple[FakeProvider, httpx.Client]) -> None:
    _, client = limited
    first, second = new_key(), new_key()
    at(0.02)
    assert [lead(client, first).status_code for _ in range(5)] == [200] * 4 + [429]
    assert limit_headers(lead(client, second))[:2] == (4, 3)


def test_the_window_slides_the_previous_bucket_weighs_in_less_and_less(
    limited: tuple[FakeProvider, httpx.Client],
) -> None:
    provider, client = limited
    key = new_key()
    start = at(0.02)
    assert [lead(client, key).status_code for _ in range(4)] == [200] * 4
    # Half-way through the next bucket (0.55-0.75 of it), the full previous one counts
    # floor(0.25..0.45 * 4) = 1: three requests pass, the fourth is refused.
    until(start + 1.55 * WINDOW)
    statuses = [lead(client, key).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Near that bucket's end the previous one counts floor(0.04 * 4) = 0: 3 of 4 in use.
    until(start + 1.96 * WINDOW)
    assert lead(client, key).status_code == 200
    assert provider.limiter is not None and provider.limiter.rejected == 1


def test_the_window_s_arithmetic_with_a_given_clock() -> None:
    limiter = SlidingWindow(RateLimit(10, 60.0))
    for _ in range(10):
        assert limiter.take("k", now=600.0)[0]
    assert not limiter.take("k", now=659.0)[0]  # the same bucket: full
    # 15 s into the next bucket: floor(0.75 * 10) = 7 of the previous count, 3 free.
    assert [limiter.take("k", now=675.0)[0] for _ in range(4)] == [True] * 3 + [False]
    allowed, headers = limiter.take("k", now=719.0)  # floor(1/60 * 10) + 3 = 3: 7 left
    assert allowed and headers["x-ratelimit-remaining"] == "6"
    assert headers["retry-after"] == headers["x-ratelimit-reset"] == "720000"
    assert limiter.rejected == 2 and max(limiter.peak_used.values()) == 10
