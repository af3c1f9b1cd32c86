"""Fixtures of the CLI tests: redis-server instances started per test (see tests/outbox)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.outbox.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-server instances with the given settings; all stopped after the test."""
    started: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
