"""``asgi-attribution outbox ...``: status, list --dead, retry, purge, deliver; exit codes and
one-line errors. Mostly in-process through ``_cli.main``; once through a real subprocess (more
in ``test_bad_input``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_attribution import Tracker
from asgi_attribution._cli import main
from asgi_attribution._cli.outbox_parser import ONE_OF
from asgi_attribution.testing import FakeProvider, Faults
from tests.support.asgi import KEY

FAST = ["--initial-backoff", "0.01", "--max-backoff", "0.02", "--no-progress"]


def append(path: Path, n: int) -> list[str]:
    """Events stored by an append-only app instance."""

    async def run() -> list[str]:
        async with Tracker("dub", outbox=path, deliver=False) as tracker:
            return [
                (
                    await tracker.track_lead(
                        click_id="clk", event_name="Sign up", customer_external_id=f"u{i}"
                    )
                ).event_id
                for i in range(n)
            ]

    return asyncio.run(run())


def outbox(*args: str) -> int:
    return main(["outbox", *args])


def make_dead_letters(provider: FakeProvider, path: str, url: str) -> None:
    """Every stored event a dead letter: a provider that answers 503, a budget of one attempt
    (a wrong key no longer makes dead letters: it pauses delivery, see test_outbox_stores)."""
    provider.faults = Faults(error_rate=1.0)
    args = ["--api-key", KEY, "--base-url", url, "--max-attempts", "1", *FAST]
    assert outbox("deliver", "--path", path, *args) == 1
    provider.faults = Faults()


def test_dead_letters_retry_deliver_purge_and_status(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "events.db")
    ids = append(Path(path), 5)
    assert outbox("status", "--path", path) == 0
    assert capsys.readouterr().out.startswith("pending 5  inflight 0  delivered 0  dead 0")

    # The provider fails every attempt and one attempt is the budget: every event becomes a
    # dead letter; exit code 1.
    make_dead_letters(provider, path, url)
    assert "0 delivered, 5 dead" in capsys.readouterr().err
    assert outbox("status", "--path", path, "--json") == 1  # dead letters present
    assert json.loads(capsys.readouterr().out)["dead"] == 5
    assert outbox("list", "--dead", "--path", path, "--json") == 0
    dead = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(d["event_id"] for d in dead) == sorted(ids)
    assert all("HTTP 503" in d["last_error"] for d in dead)
    assert all(d["error_code"] for d in dead)  # the last error's code
    assert all(d["event"]["event_name"] == "Sign up" for d in dead)

    assert outbox("retry", "--path", path, ids[0]) == 0
    assert capsys.readouterr().out == "1 dead letters back to pending\n"
    assert outbox("retry", "--path", path) == 0
    assert capsys.readouterr().out == "4 dead letters back to pending\n"

    code = outbox("deliver", "--path", path, "--api-key", KEY, "--base-url", url, *FAST)
    assert code == 0
    assert "5 delivered, 0 dead" in capsys.readouterr().err
    assert set(provider.count_by_idempotency_key()) == set(ids)

    assert outbox("purge", "--path", path, "--delivered", "--older-than", "7d") == 0
    assert capsys.readouterr().out == "0 delivered events purged\n"
    assert outbox("purge", "--path", path, "--delivered", "--older-than", "0s") == 0
    assert capsys.readouterr().out == "5 delivered events purged\n"
    assert outbox("status", "--path", path) == 0
    assert capsys.readouterr().out.startswith("pending 0  inflight 0  delivered 0  dead 0")


def test_retries_exhausted_exit_1_with_the_reason(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.faults = Faults(error_rate=1.0)
    path = str(tmp_path / "events.db")
    append(Path(path), 2)
    args = ["--api-key", KEY, "--base-url", url, "--max-attempts", "2", *FAST]
    assert outbox("deliver", "--path", path, *args) == 1
    assert outbox("list", "--dead", "--path", path) == 0
    out = capsys.readouterr().out
    assert out.count("gave up after 2 attempts") == 2 and "HTTP 503" in out


def test_deliver_draws_a_progress_bar_on_stderr(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "events.db")
    append(Path(path), 20)
    args = ["--api-key", KEY, "--base-url", url, "--progress"]
    assert outbox("deliver", "--path", path, *args) == 0
    captured = capsys.readouterr()
    assert "\r[##############################] 20 delivered, 0 dead, 0 left" in captured.err
    assert captured.out == ""  # stdout stays clean for scripts


def test_deliver_with_a_deadline_leaves_the_rest_stored_and_exits_1(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.faults = Faults(error_rate=1.0)
    path = str(tmp_path / "events.db")
    append(Path(path), 3)
    args = ["--api-key", KEY, "--base-url", url, "--deadline", "0.5", *FAST]
    assert outbox("deliver", "--path", path, *args) == 1
    assert "3 left in the outbox" in capsys.readouterr().err
    assert outbox("status", "--path", path, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"] == 3 and status["inflight"] == 0  # safe, not lost


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no outbox at {path}: file not found"),
        ("corrupt", "{path} is not a usable SQLite outbox: file is not a database"),
        ("other-db", "{path} is not an asgi-attribution outbox (no outbox table)"),
        ("directory", "no outbox at {path}: a directory, not a file"),
    ],
)
def test_a_wrong_path_or_a_corrupt_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    path = tmp_path / "events.db"
    if setup == "corrupt":
        path.write_bytes(b"\x00garbage" * 1000)
    elif setup == "other-db":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.close()
    elif setup == "directory":
        path.mkdir()
    deliver = ["deliver", "--no-progress", "--api-key", "k"]  # a key: the store is opened
    for command in (["status"], ["list", "--dead"], ["retry"], deliver):
        assert outbox(*command, "--path", str(path)) == 2
        err = capsys.readouterr().err
        assert err == f"asgi-attribution outbox: error: {message.format(path=path)}\n"
    if setup == "missing":
        assert not path.exists()  # the CLI never creates an outbox


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert outbox("status") == 2
    assert ONE_OF in capsys.readouterr().err
    assert ONE_OF == "give exactly one of --path FILE, --redis-url URL or --postgres-url URL"
    path = str(tmp_path / "events.db")
    assert outbox("status", "--path", path, "--redis-url", "redis://127.0.0.1:1/0") == 2
    assert outbox("purge", "--path", path, "--delivered", "--older-than", "soon") == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err
    assert outbox("list", "--path", path, "--state", "dead", "--dead") == 2  # one or the other
    assert outbox("frobnicate") == 2
    assert outbox("--help") == 0


def test_an_unreachable_redis_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert outbox("status", "--redis-url", "redis://127.0.0.1:1/0") == 2
    err = capsys.readouterr().err
    assert err.startswith("asgi-attribution outbox: error: cannot use Redis outbox")
    assert err.count("\n") == 1


def test_console_entry_points_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    append(path, 1)
    ok = subprocess.run(
        [sys.executable, "-m", "asgi_attribution", "outbox", "status", "--path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("pending 1  ")
    path.write_bytes(b"not sqlite" * 100)
    bad = subprocess.run(
        [sys.executable, "-m", "asgi_attribution", "outbox", "status", "--path", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "file is not a database" in bad.stderr
