"""Webhook dedupe under attack: concurrent redeliveries to two uvicorn processes sharing one
store (a SQLite file, a real redis-server), failures, restarts and a kill mid-handler.

Each test plays the provider: every event is posted 10 times at once, spread over both
processes, and each delivery is retried (as Dub does) until it gets a 2xx. It counts events
sent, handled (a handler run that finished), duplicates (finished runs beyond one), retry
answers (409/500: the provider was told to try again) and silently lost (acknowledged with a
2xx but never handled), and asserts duplicates == 0 and silently lost == 0.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from asgi_attribution.testing import sign_webhook

from .outbox.servers import RedisServer
from .support.uvicorn import Uvicorn

SECRET = "whsec_attack"
APP = "tests.support.webhook_dedupe_app:app"
DELIVERIES = 10


@dataclass
class Tally:
    """What the provider saw and what the handlers did."""

    sent: int = 0
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    acknowledged: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def runs(self, log: Path) -> dict[str, collections.Counter[str]]:
        runs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        if log.exists():
            for line in log.read_text().splitlines():
                _, event_id, what = line.split()
                runs[event_id][what] += 1
        return runs

    def row(self, log: Path) -> dict[str, int]:
        runs = self.runs(log)
        handled = sum(1 for counts in runs.values() if counts["done"] >= 1)
        duplicates = sum(max(0, counts["done"] - 1) for counts in runs.values())
        lost = sum(1 for event_id in self.acknowledged if runs[event_id]["done"] == 0)
        retried = sum(n for status, n in self.answers.items() if status in (409, 500))
        return {
            "sent": self.sent,
            "delivered": handled,
            "dup": duplicates,
            "reported": retried,
            "silently_lost": lost,
        }


def deliver(urls: list[str], events: list[str], tally: Tally, deadline: float = 90.0) -> None:
    """Post each event ``DELIVERIES`` times at once over ``urls``; retry each until a 2xx."""
    tally.sent += len(events)
    signed = {e: sign_webhook({"id": e, "event": "lead.created"}, SECRET) for e in events}
    end = time.monotonic() + deadline

    def one(event_id: str, index: int) -> None:
        body, headers = signed[event_id]
        url = urls[index % len(urls)]
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < end:
                try:
                    status = client.post(url + "/", content=body, headers=headers).status_code
                except httpx.TransportError:
                    status = 0  # the process is down: the provider tries again later
                with tally.lock:
                    tally.answers[status] += 1
                    if 200 <= status < 300:
                        tally.acknowledged.add(event_id)
                        return
                time.sleep(0.1)

    with ThreadPoolExecutor(max_workers=DELIVERIES * 2) as pool:
        jobs = [pool.submit(one, e, i) for e in events for i in range(DELIVERIES)]
        for job in jobs:
            job.result()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", "--save", "", "--appendonly", "no")
    yield server
    server.stop()


def serve(monkeypatch: pytest.MonkeyPatch, dedupe: str, log: Path, **env: str) -> Uvicorn:
    monkeypatch.setenv("WEBHOOK_DEDUPE", dedupe)
    monkeypatch.setenv("WEBHOOK_LOG", str(log))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Uvicorn(APP, "http://127.0.0.1:9")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_redeliveries_to_two_processes_run_each_handler_once(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    dedupe = (
        str(tmp_path / "webhooks.db") if kind == "sqlite" else request.getfixturevalue("redis").url
    )
    log = tmp_path / "runs.log"
    tally = Tally()
    with serve(monkeypatch, dedupe, log) as one, serve(monkeypatch, dedupe, log) as two:
        deliver([one.url, two.url], [f"evt_{kind}_{n}" for n in range(20)], tally)
    row = tally.row(log)
    print(kind, row)
    assert row == {**row, "sent": 20, "delivered": 20, "dup": 0, "silently_lost": 0}
    assert tally.answers[409] >= 1  # the concurrency was real: some found a live claim
    pids = {line.split()[0] for line in log.read_text().splitlines()}
    assert len(pids) == 2  # both processes ran handlers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_failed_handler_is_released_and_its_retry_runs_in_either_process(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    dedupe = (
        str(tmp_path / "webhooks.db") if kind == "sqlite" else request.getfixturevalue("redis").url
    )
    log = tmp_path / "runs.log"
    tally = Tally()
    fail = {"WEBHOOK_FAIL_ONCE": str(tmp_path / "failed-once")}
    with serve(monkeypatch, dedupe, log, **fail) as one, serve(monkeypatch, dedupe, log) as two:
        deliver([one.url, two.url], ["evt_fails_once"], tally)
    runs = tally.runs(log)["evt_fails_once"]
    row = tally.row(log)
    print(kind, row, dict(runs))
    assert (runs["fail"], runs["done"]) == (1, 1)  # released once, run again once
    assert tally.answers[500] == 1
    assert row == {**row, "delivered": 1, "dup": 0, "silently_lost": 0}


@pytest.mark.slow
def test_a_restart_keeps_sqlite_ids_and_a_kill_mid_handler_frees_the_claim_after_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dedupe, log = str(tmp_path / "webhooks.db"), tmp_path / "runs.log"
    tally = Tally()
    with serve(monkeypatch, dedupe, log) as one:
        deliver([one.url], ["evt_before_restart"], tally)
    with serve(monkeypatch, dedupe, log) as again:  # a new process: the file remembers
        deliver([again.url], ["evt_before_restart"], tally)
    tally.sent -= 1  # the same event, delivered again after the restart

    # SIGKILL while the handler runs: its claim stays in the file until the lease ends.
    slow = {"WEBHOOK_SLEEP": "30", "WEBHOOK_LEASE": "2"}
    with serve(monkeypatch, dedupe, log, **slow) as doomed:
        body, headers = sign_webhook({"id": "evt_killed", "event": "lead.created"}, SECRET)
        started = threading.Thread(
            target=_post_quietly, args=(doomed.url, body, headers), daemon=True
        )
        started.start()
        deadline = time.monotonic() + 30
        while "evt_killed start" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        doomed.process.send_signal(signal.SIGKILL)
        doomed.stop()  # reaps it and closes its log pipe
        started.join(30)
    with serve(monkeypatch, dedupe, log, WEBHOOK_LEASE="2", WEBHOOK_SLEEP="0.2") as survivor:
        deliver([survivor.url], ["evt_killed"], tally)
    runs = tally.runs(log)
    row = tally.row(log)
    print(row)
    assert runs["evt_before_restart"]["done"] == 1
    assert runs["evt_killed"]["start"] == 2 and runs["evt_killed"]["done"] == 1
    assert tally.answers[409] >= 1  # the live claim was honoured until its lease ended
    assert row == {**row, "delivered": 2, "dup": 0, "silently_lost": 0}


def _post_quietly(url: str, body: bytes, headers: dict[str, str]) -> None:
    with contextlib.suppress(httpx.TransportError):  # the process is killed under it
        httpx.post(url + "/", content=body, headers=headers, timeout=60)
