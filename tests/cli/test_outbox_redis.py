"""``outbox ... --redis-url`` against redis-server instances started per test on free ports, through
the real command (a subprocess, ``CI=true``, no stdin): ``status`` names a Redis without
persistence or with an evicting policy (exit 1); an evicting Redis is refused in one line (exit 2)
unless ``--allow-eviction``; ``purge --vacuum`` says Redis has nothing to vacuum."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.outbox.servers import RedisServer

from .test_bad_input import assert_one_line, run

DURABLE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
EVICTING = ("--appendonly", "yes", "--save", "", "--maxmemory", "64mb")
COMMANDS = [
    ["status"],
    ["list", "--dead"],
    ["retry"],
    ["purge", "--delivered", "--older-than", "7d"],
    ["deliver", "--api-key", "k", "--no-progress"],
]

Start = Callable[..., RedisServer]


def test_a_durable_redis_has_no_problems(redis_server: Start) -> None:
    server = redis_server(*DURABLE)
    result = run("outbox", "status", "--redis-url", server.url, "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["problems"] == []


def test_status_names_a_redis_without_persistence_and_exits_1(redis_server: Start) -> None:
    server = redis_server("--appendonly", "no", "--save", "")
    result = run("outbox", "status", "--redis-url", server.url)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    assert "problem: no append-only file: appends are not durable\n" in result.stdout
    listed = run("outbox", "list", "--dead", "--redis-url", server.url)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "no dead letters\n", "")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_evicting_redis_is_refused_in_one_line(redis_server: Start, command: list[str]) -> None:
    server = redis_server(*EVICTING, "--maxmemory-policy", "allkeys-lru")
    result = run("outbox", *command, "--redis-url", server.url)
    assert_one_line(result, 2, "maxmemory-policy allkeys-lru", "--allow-eviction")


def test_allow_eviction_opens_it_and_status_names_the_risk(redis_server: Start) -> None:
    server = redis_server(*EVICTING, "--maxmemory-policy", "allkeys-lru")
    where = ["--redis-url", server.url, "--allow-eviction"]
    result = run("outbox", "status", *where)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    assert "problem: maxmemory-policy allkeys-lru may evict events\n" in result.stdout
    listed = run("outbox", "list", "--dead", *where)
    assert (listed.returncode, listed.stderr) == (0, "")
    purged = run("outbox", "purge", "--delivered", "--older-than", "7d", *where)
    assert (purged.returncode, purged.stdout) == (0, "0 delivered events purged\n")


def test_purge_vacuum_says_redis_has_nothing_to_vacuum(redis_server: Start) -> None:
    server = redis_server(*DURABLE)
    purge = ["purge", "--delivered", "--older-than", "7d", "--vacuum"]
    result = run("outbox", *purge, "--redis-url", server.url)
    assert_one_line(result, 2, "--vacuum is for SQLite outboxes: Redis frees the memory")
