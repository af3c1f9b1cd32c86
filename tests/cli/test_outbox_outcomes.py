"""Outcomes and file problems through the real command (a subprocess, ``CI=true``, no stdin) on
SQLite files and the fake provider over a socket: ``list --not-recorded``, ``retry`` refusing a
``click_not_found`` dead letter unless ``--force``, ``status`` on a damaged file,
``purge --vacuum``, and ``deliver`` stopping when a wrong key pauses delivery."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_attribution import Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread
from tests.support.asgi import KEY

from .test_bad_input import assert_one_line, run

FAST = ["--initial-backoff", "0.01", "--max-backoff", "0.02", "--no-progress"]


def append(path: Path, leads: list[tuple[str, str, str]], pad: int = 0) -> list[str]:
    """Leads ``(click id, event name, customer)`` stored by an append-only app instance."""

    async def go() -> list[str]:
        async with Tracker("dub", outbox=path, deliver=False) as tracker:
            return [
                (
                    await tracker.track_lead(
                        click_id=click,
                        event_name=name,
                        customer_external_id=customer,
                        metadata={"pad": "x" * pad} if pad else None,
                    )
                ).event_id
                for click, name, customer in leads
            ]

    return asyncio.run(go())


def deliver(path: Path, url: str, *extra: str) -> str:
    result = run("outbox", "deliver", "--path", str(path), "--api-key", KEY, "--base-url", url,
                 *FAST, *extra)  # fmt: skip
    assert "Traceback" not in result.stderr
    return result.stderr


def test_list_not_recorded_shows_the_outcome_and_its_reason(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    # Dub keys leads by (customer, event name lower-cased, spaces as -): "sign-up" repeats.
    ids = append(
        path, [("clk", "Sign up", "u0"), ("clk", "sign-up", "u0"), ("clk", "Sign up", "u1")]
    )
    assert "3 delivered, 0 dead" in deliver(path, url)
    text = run("outbox", "list", "--not-recorded", "--path", str(path))
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    # The two u0 leads are delivered concurrently: whichever reaches Dub second is the
    # duplicate. The third (u1) is recorded either way.
    repeated = next(i for i in ids[:2] if line.startswith(f"{i}  "))
    assert line.startswith(f"{repeated}  delivered  dub lead  outcome duplicate (")
    for spelled in (["--not-recorded"], ["--state", "not-recorded"]):
        found = run("outbox", "list", *spelled, "--path", str(path), "--json")
        (row,) = [json.loads(each) for each in found.stdout.splitlines()]
        outcome = (row["event_id"], row["state"], row["outcome"])
        assert outcome == (repeated, "delivered", "duplicate")
        assert row["outcome_reason"] and row["outcome_reason"] in line
    # Undelivered states are unchanged: nothing pending or dead.
    assert run("outbox", "list", "--path", str(path)).stdout.startswith("no undelivered")


@pytest.fixture
def strict_clicks() -> Iterator[str]:
    """A fake Dub that knows one click only: any other answers 404 "click not found"."""
    with serve_in_thread(FakeProvider("dub", api_key=KEY, known_clicks={"clk_known"})) as url:
        yield url


def test_retry_of_a_click_not_found_dead_letter_is_refused_unless_forced(
    strict_clicks: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    (gone,) = append(path, [("clk_gone", "Sign up", "u1")])
    assert "0 delivered, 1 dead" in deliver(path, strict_clicks)
    listed = run("outbox", "list", "--dead", "--path", str(path), "--json")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["event_id"], row["error_code"]) == (gone, "click_not_found")

    for ids in ([gone], []):  # by id, and all dead letters
        refused = run("outbox", "retry", "--path", str(path), *ids)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stdout == "0 dead letters back to pending\n"
        (err,) = refused.stderr.splitlines()
        assert err.startswith(
            f"asgi-attribution outbox: error: not retried: {gone} (click_not_found)"
        )
        for words in ("7 days", "200 with link: null", "record nothing", "--force"):
            assert words in err
    status = run("outbox", "status", "--path", str(path), "--json")
    assert json.loads(status.stdout)["dead"] == 1  # still a dead letter

    forced = run("outbox", "retry", "--force", "--path", str(path), gone)
    assert (forced.returncode, forced.stdout, forced.stderr) == (
        0,
        "1 dead letters back to pending\n",
        "",
    )


def damage(path: Path) -> None:
    """Overwrite one page of the outbox table, in the middle of it, with garbage (not a free
    page: appended rows moved into the table leave theirs free)."""
    conn = sqlite3.connect(path)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    query = "SELECT pageno FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf' ORDER BY 1"
    pages = [r[0] for r in conn.execute(query)]
    conn.close()
    data = bytearray(path.read_bytes())
    page = pages[len(pages) // 2] - 1  # page numbers count from 1
    data[page * size + 8 : (page + 1) * size] = b"\xff" * (size - 8)
    path.write_bytes(bytes(data))


def test_status_shows_a_damaged_file_and_exits_1(tmp_path: Path) -> None:
    # status and list name every row the damaged file cannot read, by event id; exit 1.
    path = tmp_path / "events.db"
    stored = append(path, [("clk", "Sign up", f"u{i}") for i in range(300)], pad=300)
    healthy = run("outbox", "status", "--path", str(path))
    assert (healthy.returncode, healthy.stderr) == (0, "")
    damage(path)
    result = run("outbox", "status", "--path", str(path))
    assert result.returncode == 1 and result.stderr == "", result.stderr
    first, *lines = result.stdout.splitlines()
    problems = [line for line in lines if line.startswith("problem: ")]
    unreadable = [line.removeprefix("unreadable: ") for line in lines if line.startswith("unre")]
    pace = [line for line in lines if line.startswith("pace: ")]  # this process sent nothing
    assert pace == ["pace: unknown (no answer yet in this process)"]
    assert len(problems) + len(unreadable) + len(pace) == len(lines)
    assert any("quick_check" in line for line in problems)
    assert any("rows unreadable (ids " in line for line in problems)
    # Every unreadable row named by its event id; the readable ones counted.
    assert unreadable and set(unreadable) <= set(stored) and len(unreadable) < 20
    assert first.startswith(f"pending {300 - len(unreadable)}  inflight 0  delivered 0  dead 0")
    data = json.loads(run("outbox", "status", "--path", str(path), "--json").stdout)
    assert data["unreadable"] == unreadable and any("quick_check" in p for p in data["problems"])

    listed = run("outbox", "list", "--state", "all", "--limit", "1000", "--path", str(path))
    assert listed.returncode == 1 and listed.stderr == "", listed.stderr
    rows = [line.split()[:2] for line in listed.stdout.splitlines()]
    assert {i for i, state in rows if state == "pending"} == set(stored) - set(unreadable)
    assert [i for i, state in rows if state == "unreadable"] == unreadable
    lines = run("outbox", "list", "--json", "--path", str(path)).stdout.splitlines()
    named = [json.loads(line) for line in lines if '"unreadable"' in line]
    assert [n["id"] for n in named] == unreadable


def test_purge_vacuum_shrinks_the_file(provider: FakeProvider, url: str, tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    append(path, [("clk", "Sign up", f"u{i}") for i in range(300)], pad=2000)
    assert "300 delivered, 0 dead" in deliver(path, url)
    before = path.stat().st_size
    purge = ["purge", "--path", str(path), "--delivered", "--older-than", "0s"]
    result = run("outbox", *purge, "--vacuum")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"300 delivered events purged\n{path} vacuumed\n"
    assert path.stat().st_size < before / 10
    again = run("outbox", *purge)  # without --vacuum: nothing else happens
    assert (again.returncode, again.stdout) == (0, "0 delivered events purged\n")


def test_deliver_with_a_wrong_key_stops_paused_and_keeps_the_events(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    append(path, [("clk", "Sign up", "u1"), ("clk", "Sign up", "u2")])
    result = run("outbox", "deliver", "--path", str(path), "--api-key", "wrong",
                 "--base-url", url, *FAST)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "asgi-attribution outbox: error: delivery paused: " in result.stderr
    assert "401" in result.stderr and "fix the cause" in result.stderr
    status = json.loads(run("outbox", "status", "--path", str(path), "--json").stdout)
    assert (status["pending"], status["dead"]) == (2, 0)  # kept, budgets untouched


def test_allow_eviction_is_for_redis(tmp_path: Path) -> None:
    result = run("outbox", "status", "--path", str(tmp_path / "x.db"), "--allow-eviction")
    assert_one_line(result, 2, "--allow-eviction is for a Redis outbox (--redis-url)")
