"""The sync API attacked from 8 threads at once, in every state of the tracker (issue 26, item 1).

Each scenario calls ``sync.track_lead`` from 8 threads concurrently against the fake provider
over a real socket, then lets the tracker finish (``async with tracker`` + ``flush``) and counts:
calls that outlived their ``timeout`` (plus a generous slack: the machine is shared), calls that
raised a ``BaseException`` other than ``Exception`` (``CancelledError`` kills a view's thread),
events delivered, events delivered twice, events reported (a ``DeliveryError`` naming them, or
``on_drop``) and events silently lost. Only zero is acceptable for hangs, base exceptions,
duplicates and silently lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import Delivery, DeliveryError, RetryPolicy, Tracker, sync
from asgi_attribution.testing import FakeProvider

from .support.asgi import KEY

THREADS = 8
CALLS = 25  # per thread
TIMEOUT = 3.0  # each call's bound
SLACK = 20.0  # generous: a loaded machine, never a speed claim
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@dataclasses.dataclass
class Tally:
    sent: int = 0
    hung: int = 0
    base_exceptions: list[str] = dataclasses.field(default_factory=list)
    other_errors: list[str] = dataclasses.field(default_factory=list)
    reported: set[str] = dataclasses.field(default_factory=set)  # customer ids
    delivered: int = 0
    duplicates: int = 0
    lost: set[str] = dataclasses.field(default_factory=set)

    def row(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} dup={self.duplicates} "
            f"reported={len(self.reported)} lost={len(self.lost)} hung={self.hung} "
            f"base={len(self.base_exceptions)} other={len(self.other_errors)}"
        )


def hammer(
    tracker: Tracker, tally: Tally, prefix: str, during: Callable[[], None] = lambda: None
) -> None:
    """8 threads x CALLS calls of ``sync.track_lead``; ``during`` runs while they do."""
    lock = threading.Lock()
    finished = threading.Event()
    done = [0]

    def worker(t: int) -> None:
        for i in range(CALLS):
            user = f"{prefix}{t}_{i}"
            began = time.monotonic()
            try:
                sync.track_lead(
                    None,
                    "Sign up",
                    tracker=tracker,
                    click_id=f"clk_{user}",
                    customer_external_id=user,
                    timeout=TIMEOUT,
                )
            except DeliveryError:
                with lock:
                    tally.reported.add(user)
            except Exception as exc:  # counted: an error that names no event
                with lock:
                    tally.other_errors.append(f"{type(exc).__name__}: {exc}")
            except BaseException as exc:  # what the attack counts
                with lock:
                    tally.base_exceptions.append(type(exc).__name__)
            finally:
                with lock:
                    tally.sent += 1
                    if time.monotonic() - began > TIMEOUT + SLACK:
                        tally.hung += 1
        with lock:
            done[0] += 1
            if done[0] == THREADS:
                finished.set()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    during()
    # A hung thread is counted, not waited for: the bound is what the test checks.
    finished.wait(CALLS * (TIMEOUT + SLACK))
    with lock:
        tally.hung += THREADS - done[0]


def settle(tracker: Tracker, provider: FakeProvider, tally: Tally, prefix: str) -> None:
    """Let the tracker deliver what it holds, then count at the provider."""

    async def finish() -> None:
        async with tracker:
            await tracker.flush(60)

    asyncio.run(finish())
    store = getattr(tracker.transport, "store", None)
    if store is not None:  # rows still in the outbox are kept (durable), for the next worker

        async def kept() -> set[str]:
            await store.open()
            try:
                rows = [
                    r for state in ("pending", "inflight") for r in await store.list(state, 10_000)
                ]
                return {str(row.to_event().customer_external_id) for row in rows}
            finally:
                await store.close()

        tally.reported |= asyncio.run(kept())
    by_user = Counter(
        lead["customerExternalId"]
        for lead in provider.leads()
        if lead["customerExternalId"].startswith(prefix)
    )
    twice = sum(1 for count in provider.count_by_idempotency_key().values() if count > 1)
    tally.delivered = len(by_user)
    tally.duplicates = sum(count - 1 for count in by_user.values()) + twice
    users = {f"{prefix}{t}_{i}" for t in range(THREADS) for i in range(CALLS)}
    tally.lost = users - set(by_user) - tally.reported


def make(url: str, dropped: set[str], **options: Any) -> Tracker:
    def on_drop(delivery: Delivery, reason: str) -> None:
        dropped.add(str(getattr(delivery.event, "customer_external_id", "")))

    if "outbox" not in options:  # an outbox keeps what it has not delivered: nothing to drop
        options["on_drop"] = on_drop
    return Tracker("dub", api_key=KEY, base_url=url, retry=FAST, **options)


def check(tally: Tally, dropped: set[str], in_flight: int = 0) -> None:
    """``in_flight``: attempts a loop's end may cut short (re-attempted: at-least-once)."""
    tally.reported |= dropped
    tally.lost -= dropped
    print(tally.row())
    assert tally.sent == THREADS * CALLS
    assert tally.hung == 0, tally.row()
    assert tally.base_exceptions == [], tally.row()
    assert tally.other_errors == [], tally.other_errors[:5]
    assert tally.duplicates <= in_flight, tally.row()
    assert tally.lost == set(), tally.row()


def test_an_unstarted_sqlite_outbox_from_8_threads(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    dropped: set[str] = set()
    tracker = make(url, dropped, outbox=tmp_path / "events.db")
    tally = Tally()
    hammer(tracker, tally, "o")
    settle(tracker, provider, tally, "o")
    check(tally, dropped)


def test_an_unstarted_background_tracker_from_8_threads(provider: FakeProvider, url: str) -> None:
    dropped: set[str] = set()
    tracker = make(url, dropped)
    tally = Tally()
    hammer(tracker, tally, "b")
    settle(tracker, provider, tally, "b")
    check(tally, dropped)


def test_a_tracker_started_on_an_ended_loop_from_8_threads(
    provider: FakeProvider, url: str
) -> None:
    dropped: set[str] = set()
    tracker = make(url, dropped)
    asyncio.run(tracker.start())  # started, never closed: its loop is gone
    tally = Tally()
    hammer(tracker, tally, "e")
    settle(tracker, provider, tally, "e")
    check(tally, dropped)


@pytest.mark.parametrize("outbox", [False, True], ids=["background", "sqlite-outbox"])
def test_an_owner_loop_that_ends_while_8_threads_hand_it_events(
    provider: FakeProvider, url: str, tmp_path: Path, outbox: bool
) -> None:
    dropped: set[str] = set()
    options: dict[str, Any] = {"outbox": tmp_path / "events.db"} if outbox else {}
    tracker = make(url, dropped, **options)
    ready = threading.Event()

    async def owner() -> None:  # a job that starts the tracker and returns without aclose
        await tracker.start()
        ready.set()
        await asyncio.sleep(0.5)

    owner_thread = threading.Thread(target=asyncio.run, args=(owner(),), daemon=True)
    owner_thread.start()
    assert ready.wait(30)
    tally = Tally()
    hammer(tracker, tally, "w")
    owner_thread.join(60)
    settle(tracker, provider, tally, "w")
    # Attempts on the wire when asyncio.run cancelled the owner's tasks are made again (the
    # same Idempotency-Key): at most one per worker. Never by the hand-off.
    check(tally, dropped, in_flight=10)
