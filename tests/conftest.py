"""Shared fixtures: the fake provider over a real socket, and the anyio backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

from .support.asgi import KEY

# Helpers and the apps uvicorn imports in subprocesses: no tests, no doctests to collect there.
collect_ignore = ["support"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# The fault-injecting Dub API under uvicorn on 127.0.0.1, one per test module; each test gets it
# with no faults and nothing recorded.
@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(provider) as url:
        yield provider, url


@pytest.fixture
def provider(fake: tuple[FakeProvider, str]) -> FakeProvider:
    fake[0].faults = Faults()
    fake[0].reset()
    return fake[0]


@pytest.fixture
def url(fake: tuple[FakeProvider, str]) -> str:
    return fake[1]
