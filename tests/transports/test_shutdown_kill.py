"""SIGTERM, then SIGKILL in the middle of the drain: every undelivered id is already logged.

uvicorn serves ``shutdown_app`` in its own process; the provider answers the first few events,
then hangs. After SIGTERM the app logs the ids it has not delivered yet (before draining), and a
SIGKILL cuts the drain short. Sent, delivered and reported are counted: silently lost is zero.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution.testing import FakeProvider, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
SIGNUPS = 300  # enough ids for more than one 8 KB log line
ANSWERED = 5
EVENT_ID = re.compile(r"evt_[0-9a-f]{32}")


class HangAfter:
    """Passes the first ``answered`` tracking calls to the fake provider, then never answers
    (until the client goes away)."""

    def __init__(self, inner: FakeProvider, answered: int) -> None:
        self.inner, self.left = inner, answered
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.lock:
            passing = scope["type"] != "http" or self.left > 0
            if scope["type"] == "http" and passing:
                self.left -= 1
        if passing:
            await self.inner(scope, receive, send)
            return
        while (await receive())["type"] != "http.disconnect":
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hanging(provider: FakeProvider) -> Iterator[str]:
    with serve_in_thread(HangAfter(provider, ANSWERED)) as url:
        yield url


def test_sigkill_mid_drain_leaves_every_undelivered_id_in_the_log(
    provider: FakeProvider, hanging: str
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "tests.transports.shutdown_app:create"),
            *("--port", str(port), "--timeout-graceful-shutdown", "1"),
        ],
        cwd=ROOT,
        env={**os.environ, "FAKE_PROVIDER_URL": hanging},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    draining = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "not yet delivered" in line:
                draining.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        app = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(app, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)
        with httpx.Client(base_url=app, timeout=30) as client:
            answers = [
                client.post(f"/signup?u=u{i}", headers={"cookie": f"dub_id=clk{i}"}).json()
                for i in range(SIGNUPS)
            ]
        process.send_signal(signal.SIGTERM)
        assert draining.wait(30), "".join(lines)
        time.sleep(0.3)  # mid-drain: the provider still hangs
        assert process.poll() is None, "the drain should still be running"
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    sent = {answer["event_id"] for answer in answers}
    assert {answer["status"] for answer in answers} == {"queued"}
    delivered = set(provider.count_by_idempotency_key())
    logged = [line.rstrip("\n") for line in lines if "not yet delivered" in line]
    assert len(logged) >= 2 and all(len(line.encode()) <= 8 * 1024 for line in logged)
    reported = {event_id for line in logged for event_id in EVENT_ID.findall(line)}
    lost_silently = sent - delivered - reported
    assert (len(sent), len(delivered)) == (SIGNUPS, ANSWERED)
    assert reported == sent - delivered
    assert lost_silently == set()
