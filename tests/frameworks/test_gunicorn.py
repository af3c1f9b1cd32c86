"""Flask and Django WSGI apps under a real gunicorn (sync workers, ``-w 2``), over a socket.

Each scenario counts, per signup: sent (answered by the app), delivered (in the fake provider's
ledger), duplicates, reported (its id in an ERROR line *and* in an ``on_drop`` call) and
silently lost (none of these), and asserts silently lost == 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_attribution.testing import FakeProvider, Faults

from ..support.uvicorn import ROOT, free_port

APPS = "tests.support.wsgi_apps"
FACTORIES = {"flask": f"{APPS}:flask_app()", "django": f"{APPS}:django_wsgi()"}


class Gunicorn:
    """``gunicorn -w 2`` (sync workers) in its own process; its log goes to a file."""

    def __init__(self, app: str, fake_url: str, log: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "sync",
                "-b",
                f"127.0.0.1:{self.port}",
                "--graceful-timeout",
                "60",
                *args,
                FACTORIES[app],
            ],
            cwd=ROOT,
            env={**os.environ, "FAKE_PROVIDER_URL": fake_url, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def __enter__(self) -> Gunicorn:
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log}")
            try:
                httpx.get(self.url + "/", timeout=5)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The worker processes' pids (children of the master)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.log

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def signups(server: Gunicorn, users: list[str]) -> dict[str, dict[str, Any]]:
    """``POST /signup`` for each user, with its click cookie: ``{user: answer}``."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return {
            user: client.post(f"/signup?u={user}", headers={"cookie": f"dub_id=clk_{user}"}).json()
            for user in users
        }


def count(provider: FakeProvider, answers: dict[str, dict[str, Any]], log: str) -> dict[str, int]:
    """sent / delivered / dup / reported / silently lost, by user (one signup each)."""
    leads = Counter(lead["customerExternalId"] for lead in provider.leads())
    logged = set(
        re.findall(
            r"evt_\w+|[0-9a-f-]{36}",
            " ".join(
                line for line in log.splitlines() if "ERROR" in line or "not delivered" in line
            ),
        )
    )
    dropped = set(re.findall(r"ON_DROP (\S+)", log))
    delivered = {user for user in answers if leads[user] >= 1}
    reported = {
        user
        for user, answer in answers.items()
        if answer["event_id"] in logged and answer["event_id"] in dropped
    }
    lost = [user for user in answers if user not in delivered and user not in reported]
    return {
        "sent": len(answers),
        "delivered": len(delivered),
        "dup": sum(n - 1 for user, n in leads.items() if user in answers and n > 1),
        "reported": len(reported),
        "lost": len(lost),
    }


@pytest.mark.parametrize(("app", "preload"), [("flask", True), ("django", False)])
def test_a_landing_sets_the_cookie_and_each_lead_arrives_once(
    app: str, preload: bool, provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    """With --preload the tracker is built in the master and started in each worker only."""
    provider.faults = Faults(slow_rate=0.5, slow_seconds=0.3, error_rate=0.2, seed=3)
    users = [f"u{i}_{app}" for i in range(20)]
    args = ("--preload",) if preload else ()
    with Gunicorn(app, url, tmp_path / "gunicorn.log", *args) as server:
        landing = httpx.get(server.url + "/?dub_id=clk_land", timeout=30)
        assert landing.json()["click_id"] == "clk_land", server.log
        assert landing.headers["set-cookie"].startswith("dub_id=clk_land;")
        answers = signups(server, users)
        served_by = len(server.workers())
        log = server.stop()
    assert server.process.returncode == 0, log
    assert served_by == 2, log
    assert {a["status"] for a in answers.values()} == {"queued"}, log
    counts = count(provider, answers, log)
    print(app, counts)
    assert counts == {"sent": 20, "delivered": 20, "dup": 0, "reported": 0, "lost": 0}, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("app", ["flask", "django"])
def test_sigterm_delivers_what_it_can_and_reports_the_rest_by_id(
    app: str, provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    users = [f"ok{i}_{app}" for i in range(6)]
    failing = [f"down{i}_{app}" for i in range(6)]
    with Gunicorn(app, url, tmp_path / "gunicorn.log", WSGI_SHUTDOWN="1") as server:
        answers = signups(server, users)
        # The provider goes down: these wait in the workers' queues when SIGTERM comes.
        provider.faults = Faults(error_rate=1.0)
        answers |= signups(server, failing)
        log = server.stop()
    assert server.process.returncode == 0, log
    counts = count(provider, answers, log)
    print(app, counts)
    assert counts["lost"] == 0 and counts["dup"] == 0, log
    assert counts["delivered"] + counts["reported"] == 12, log
    assert counts["reported"] >= len(failing), log  # every failing one, by id, both ways


@pytest.mark.parametrize("app", ["flask", "django"])
def test_a_sqlite_outbox_survives_a_sigkill_of_a_worker(
    app: str, provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    provider.faults = Faults(error_rate=1.0)  # nothing leaves before the kill
    users = [f"box{i}_{app}" for i in range(10)]
    with Gunicorn(app, url, tmp_path / "gunicorn.log", WSGI_OUTBOX=str(outbox)) as server:
        answers = signups(server, users)
        assert {a["status"] for a in answers.values()} == {"queued"}, server.log
        for pid in server.workers():
            os.kill(pid, signal.SIGKILL)  # both: whatever either held is in the file
        provider.faults = Faults()
        deadline = time.monotonic() + 40  # claims of the killed workers wait out their 5 s lease
        while time.monotonic() < deadline and len(provider.leads()) < len(users):
            # A new worker starts delivering at its first request: visits wake them.
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(server.url + "/", timeout=5)
            time.sleep(0.2)
        log = server.stop()
    by_workers = len(provider.leads())
    # What the new workers did not deliver, the command does.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "asgi_attribution",
            "outbox",
            "deliver",
            "--path",
            str(outbox),
            "--api-key",
            "dub_test_key",
            "--base-url",
            url,
            "--no-progress",
        ],
        cwd=ROOT,
        check=True,
        timeout=180,
        capture_output=True,
    )
    counts = count(provider, answers, log)
    print(app, counts, "delivered by the next workers:", by_workers)
    assert counts == {"sent": 10, "delivered": 10, "dup": 0, "reported": 0, "lost": 0}, log


SERVE = """
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from tests.support.wsgi_apps import flask_app

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", int(sys.argv[1]), flask_app(), handler_class=Quiet)
server.serve_forever()
"""


def test_a_server_without_a_sigterm_handler_still_drains_on_sigterm(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    """wsgiref sets no SIGTERM handler: the middleware's exits in order, and atexit drains."""
    # The provider is down: the leads wait in the queue at SIGTERM; without the drain they would
    # vanish with the process, with it each is reported by id.
    provider.faults = Faults(error_rate=1.0)
    port = free_port()
    log = tmp_path / "wsgiref.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(port)],
            cwd=ROOT,
            env={**os.environ, "FAKE_PROVIDER_URL": url, "WSGI_SHUTDOWN": "1"},
            stderr=sink,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.1)
            server = type("Served", (), {"url": f"http://127.0.0.1:{port}"})()
            users = [f"ref{i}" for i in range(5)]
            answers = signups(server, users)  # type: ignore[arg-type]
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text(errors="replace")
    assert process.returncode == 128 + signal.SIGTERM, text
    counts = count(provider, answers, text)
    print("wsgiref", counts)
    assert counts == {"sent": 5, "delivered": 0, "dup": 0, "reported": 5, "lost": 0}, text
