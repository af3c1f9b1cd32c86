"""Every bad input is one line on stderr and exit code 2, never a traceback: each case runs the
real command in a subprocess, with ``CI=true``, no stdin and no API key in the environment."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_attribution.transports import SQLiteOutbox

ROOT = Path(__file__).resolve().parents[2]
CLEARED = ("DUB_API_KEY", "PIMMS_API_KEY", "ASGI_ATTRIBUTION_OUTBOX")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return subprocess.run(
        [sys.executable, "-m", "asgi_attribution", *args],
        cwd=ROOT,
        env={**base, "CI": "true", "NO_PROXY": "*", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def create_outbox(path: Path) -> None:
    async with SQLiteOutbox(path):  # creates the file and its table
        pass


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    err = result.stderr
    assert result.returncode == code, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert result.stdout == ""
    for word in words:
        assert word in err
    return err


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener nobody answers: a connection to it would show in its accept queue."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def file_of(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "events.db"
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 1000)
    elif kind == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.close()
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", ["no outbox at", "file not found"]),
        ("corrupt", ["is not a usable SQLite outbox", "file is not a database"]),
        ("foreign", ["is not an asgi-attribution outbox (no outbox table)"]),
        ("directory", ["a directory, not a file"]),
    ],
)
@pytest.mark.parametrize(
    "command", [["status"], ["list", "--dead"], ["retry", "evt_1"], ["purge", "--delivered"]]
)
def test_an_unusable_sqlite_file(
    tmp_path: Path, kind: str, words: list[str], command: list[str]
) -> None:
    path = file_of(tmp_path, kind)
    extra = ["--older-than", "7d"] if command[0] == "purge" else []
    result = run("outbox", *command, *extra, "--path", str(path))
    assert_one_line(result, 2, "asgi-attribution outbox: error: ", *words)
    if kind == "missing":
        assert not path.exists()  # the CLI never creates an outbox


def test_deliver_from_an_unusable_file_with_a_key(tmp_path: Path) -> None:
    path = file_of(tmp_path, "corrupt")
    result = run("outbox", "deliver", "--path", str(path), "--no-progress", DUB_API_KEY="k")
    assert_one_line(result, 2, "file is not a database")


def test_a_redis_url_that_is_not_one_is_refused_without_echoing_a_password() -> None:
    result = run("outbox", "status", "--redis-url", "http://user:s3cret@example.com:6379/0")
    err = assert_one_line(result, 2, "--redis-url is not a Redis URL (scheme 'http')")
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://127.0.0.1:abc/0", ["not a usable Redis URL", "Port could not be cast"]),
        ("redis://[bad", ["not a usable Redis URL", "Invalid IPv6 URL"]),
    ],
)
def test_a_malformed_redis_url(url: str, words: list[str]) -> None:
    assert_one_line(run("outbox", "list", "--dead", "--redis-url", url), 2, *words)


def test_the_environment_variable_with_a_wrong_url_is_a_missing_file(tmp_path: Path) -> None:
    result = run("outbox", "status", ASGI_ATTRIBUTION_OUTBOX=str(tmp_path / "nope.db"))
    assert_one_line(result, 2, "no outbox at", "file not found")


def test_deliver_without_an_api_key_touches_no_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    result = run("outbox", "deliver", "--path", str(path))
    err = assert_one_line(result, 2, "DUB_API_KEY")
    assert err == (
        "asgi-attribution outbox: error: no API key: set DUB_API_KEY "
        "(PIMMS_API_KEY for PIMMS events) or pass --api-key\n"
    )
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_deliver_without_an_api_key_makes_no_connection(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run("outbox", "deliver", "--follow", "--redis-url", f"redis://127.0.0.1:{port}/0")
    assert_one_line(result, 2, "no API key: set DUB_API_KEY")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected


def test_an_empty_api_key_is_no_key(tmp_path: Path) -> None:
    result = run("outbox", "deliver", "--path", str(tmp_path / "x.db"), DUB_API_KEY="")
    assert_one_line(result, 2, "no API key")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["outbox", "purge", "--delivered", "--older-than", "soon"], ["invalid duration 'soon'"]),
        (["outbox", "deliver", "--lease", "5x"], ["argument --lease: invalid duration '5x'"]),
        (["outbox", "deliver", "--deadline=-1m"], ["invalid duration '-1m'"]),
        (["outbox", "deliver", "--lease", "0"], ["--lease: must be above 0, got '0'"]),
        (["outbox", "deliver", "--concurrency", "0"], ["--concurrency: must be at least 1"]),
        (["outbox", "deliver", "--timeout", "nan"], ["--timeout: must be a number above 0"]),
        (["outbox", "deliver", "--base-url", "ftp://x"], ["--base-url 'ftp://x' is not an http"]),
        (["outbox", "deliver", "--initial-backoff=-1"], ["initial_backoff must be >= 0"]),
        (["outbox", "list", "--limit", "ten"], ["--limit: invalid int value: 'ten'"]),
        (["outbox", "list", "--state", "lost"], ["argument --state: invalid choice: 'lost'"]),
        (["outbox", "list", "--dead", "--state", "pending"], ["not allowed with argument"]),
        (
            ["outbox", "status"],
            ["give exactly one of --path FILE, --redis-url URL or --postgres-url"],
        ),
        (["outbox", "frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["outbox"], ["the following arguments are required: COMMAND"]),
        (["fake-provider", "--port", "99999"], ["invalid port '99999': use 0 to 65535"]),
        (["fake-provider", "--port", "http"], ["--port: invalid int value: 'http'"]),
        (["fake-provider", "--error-rate", "2"], ["error_rate"]),
        (["demo", "--app", "no_such_module:app"], ["cannot import 'no_such_module'"]),
        (["demo", "--app", "json:no_such_attribute"], ["has no attribute 'no_such_attribute'"]),
        (["demo", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ([], ["the following arguments are required: COMMAND"]),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    if args[:2] == ["outbox", "deliver"]:
        args = [*args, "--path", "unused.db", "--api-key", "k"]
    assert_one_line(run(*args), 2, *words)


def test_a_port_that_is_taken(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run("fake-provider", "--port", str(port))
    assert_one_line(result, 2, f"cannot listen on 127.0.0.1:{port}")


def test_retry_of_unknown_ids_is_exit_1_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(create_outbox(path))
    result = run("outbox", "retry", "--path", str(path), "evt_nope", "evt_gone", "evt_nope")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout == "0 dead letters back to pending\n"
    assert result.stderr == (
        "asgi-attribution outbox: error: unknown event ids (not dead letters here): "
        "evt_nope, evt_gone\n"
    )
