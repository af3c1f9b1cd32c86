"""``outbox list --state``, JSON Lines, ``retry`` of unknown ids, ``deliver`` without a key:
in-process through ``_cli.main`` on real SQLite files and the fake provider over a socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asgi_attribution._cli import main
from asgi_attribution.testing import FakeProvider
from asgi_attribution.transports import OutboxStore

from .test_outbox_cli import append, make_dead_letters

# Pending and in-flight rows are listed through the store's read-only list_rows(states, limit);
# until the stores have it, asking for them is a one-line usage error that names --state dead.
LISTS_ALL_STATES = callable(getattr(OutboxStore, "list_rows", None))


def outbox(*args: str) -> int:
    return main(["outbox", *args])


def json_lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines)  # one per line
    return [json.loads(line) for line in lines]


@pytest.fixture
def dead_letters(
    provider: FakeProvider, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, list[str]]:
    """An outbox with three dead letters (503 to the only attempt allowed)."""
    path = str(tmp_path / "events.db")
    ids = append(Path(path), 3)
    make_dead_letters(provider, path, url)
    capsys.readouterr()
    return path, ids


def test_list_state_dead_is_json_lines(
    dead_letters: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = dead_letters
    assert outbox("list", "--state", "dead", "--path", path, "--json") == 0
    rows = json_lines(capsys.readouterr().out)
    assert [row["event_id"] for row in rows] == ids  # oldest first
    assert {row["state"] for row in rows} == {"dead"}
    assert all(row["provider"] == "dub" and row["kind"] == "lead" for row in rows)
    assert outbox("list", "--dead", "--path", path, "--json", "--limit", "2") == 0
    assert [row["event_id"] for row in json_lines(capsys.readouterr().out)] == ids[:2]


def test_list_dead_as_text_is_unchanged(
    dead_letters: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = dead_letters
    assert outbox("list", "--dead", "--path", path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ids
    assert all(line.split("  ")[1] == "dub lead" for line in lines)
    assert all("HTTP 503" in line for line in lines)


@pytest.mark.parametrize("state", ["pending", "all"])
def test_list_pending_or_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    path = str(tmp_path / "events.db")
    ids = append(Path(path), 2)
    args = ["list", "--path", path, "--json"] + ([] if state == "all" else ["--state", state])
    if not LISTS_ALL_STATES:
        assert outbox(*args) == 2
        err = capsys.readouterr().err
        assert err == (
            f"asgi-attribution outbox: error: {path} cannot list {state} events yet "
            "(it lists dead letters only): use --state dead\n"
        )
        return
    assert outbox(*args) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [(row["event_id"], row["state"]) for row in rows] == [(i, "pending") for i in ids]


def test_retry_names_the_unknown_ids_and_still_retries_the_known(
    dead_letters: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = dead_letters
    assert outbox("retry", "--path", path, ids[0], "evt_nope", ids[1], "evt_gone") == 1
    captured = capsys.readouterr()
    assert captured.out == "2 dead letters back to pending\n"
    assert captured.err == (
        "asgi-attribution outbox: error: unknown event ids (not dead letters here): "
        "evt_nope, evt_gone\n"
    )
    # A retried id is pending now, no longer a dead letter: unknown to a second retry.
    assert outbox("retry", "--path", path, ids[0]) == 1
    assert f"not dead letters here): {ids[0]}\n" in capsys.readouterr().err
    assert outbox("status", "--path", path, "--json") == 1
    status = json.loads(capsys.readouterr().out)
    assert (status["pending"], status["dead"]) == (2, 1)
    assert outbox("retry", "--path", path, ids[2], ids[2]) == 0  # a repeated id counts once
    assert capsys.readouterr().out == "1 dead letters back to pending\n"


def test_deliver_without_a_key_stops_before_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUB_API_KEY", raising=False)
    monkeypatch.delenv("PIMMS_API_KEY", raising=False)
    path = tmp_path / "events.db"
    assert outbox("deliver", "--path", str(path)) == 2
    assert "no API key: set DUB_API_KEY" in capsys.readouterr().err
    assert not path.exists()
    # One provider's key is enough to start: each event takes its own provider's key.
    monkeypatch.setenv("PIMMS_API_KEY", "pimms_key")
    assert outbox("deliver", "--path", str(path)) == 2
    assert "no outbox at" in capsys.readouterr().err  # past the key check, at the store
