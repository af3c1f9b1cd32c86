"""Fixtures of the outbox tests: redis-server instances started per case."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .servers import RedisServer

#: A Redis as the outbox requires it: AOF on, never evicting.
DURABLE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-server instances with the given settings; all stopped after the test."""
    started: list[RedisServer] = []

    def start(*args: str, port: int | None = None, now: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", *args, port=port, start=now)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
