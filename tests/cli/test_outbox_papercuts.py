"""Issue 29's ``outbox`` papercuts: ``deliver`` says what it waits for after a crash, ``list``
says when a state is empty, a dead letter's id is printed once, a negative ``--older-than``
gets a clear error (each failed before its fix)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asgi_attribution._cli import main
from asgi_attribution.testing import FakeProvider, Faults
from tests.cli.test_outbox_cli import FAST, append, make_dead_letters
from tests.support.asgi import KEY

LEASE = 3.0  # the crashed worker's lease: deliver waits this long for its claims


def crash_holding_claims(path: Path) -> None:
    """A worker process that claims every event, then dies (no release, no outcome)."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from asgi_attribution.transports import SQLiteOutbox

        async def claim():
            store = SQLiteOutbox({str(path)!r}, create=False)
            await store.open()
            claimed = await store.claim(100, {LEASE})
            print(len(claimed), flush=True)
            os._exit(0)  # a crash: the claims stay until their lease ends

        asyncio.run(claim())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "2", done.stderr


def test_deliver_says_it_waits_for_a_crashed_workers_leases(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.db"
    sent = append(path, 2)
    crash_holding_claims(path)
    args = ["--api-key", KEY, "--base-url", url, "--lease", "30s", *FAST]
    assert main(["outbox", "deliver", "--path", str(path), *args]) == 0
    err = capsys.readouterr().err
    [waiting] = [line for line in err.splitlines() if "waiting for" in line]
    assert "2 events in flight under another worker's claim" in waiting
    assert "when its lease ends" in waiting and "--lease 30s here" in waiting
    assert "2 delivered, 0 dead" in err
    # Each event delivered once, after the lease: none lost, none sent twice.
    assert sorted(provider.count_by_idempotency_key().items()) == sorted((i, 1) for i in sent)


def test_list_on_an_empty_state_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.db"
    append(path, 1)
    assert main(["outbox", "list", "--dead", "--path", str(path)]) == 0
    assert capsys.readouterr().out == "no dead letters\n"
    assert main(["outbox", "list", "--not-recorded", "--path", str(path)]) == 0
    assert capsys.readouterr().out == "no delivered events that the provider did not record\n"
    # JSON Lines stay JSON: the note goes to stderr.
    assert main(["outbox", "list", "--dead", "--json", "--path", str(path)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "no dead letters\n")
    assert main(["outbox", "list", "--path", str(path)]) == 0
    assert "no undelivered" not in capsys.readouterr().out  # one pending event is listed


def test_a_dead_letters_id_is_printed_once(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.db"
    [event_id] = append(path, 1)
    make_dead_letters(provider, str(path), url)
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "dead letter" in line]
    assert line.count(event_id) == 1, line
    assert main(["outbox", "list", "--dead", "--path", str(path)]) == 0
    [listed] = capsys.readouterr().out.splitlines()
    assert listed.count(event_id) == 1 and "HTTP 503" in listed, listed
    # The stored error keeps its whole text (JSON is for programs).
    assert main(["outbox", "list", "--dead", "--json", "--path", str(path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["last_error"].startswith(f"event {event_id} not delivered: HTTP 503")
    provider.faults = Faults()


@pytest.mark.parametrize("form", [["--older-than", "-1d"], ["--older-than=-1d"]])
def test_a_negative_older_than_is_a_clear_error(
    form: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.db"
    append(path, 1)
    assert main(["outbox", "purge", "--delivered", *form, "--path", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid duration '-1d': a duration cannot be negative" in err
    assert "expected one argument" not in err
    assert main(["outbox", "status", "--path", str(path)]) == 0  # nothing was touched
    assert capsys.readouterr().out.startswith("pending 1 ")
