"""Issue 26 against real PostgreSQL: a server hung (SIGSTOP) past ``append_timeout`` whose
writes land after their callers gave up, an unstarted tracker's first call to a hung server,
a store that must take appends again once the server does, and ``within=`` waiting on a lock.

The hang needs a server of its own (stopping the shared one would stall other tests): a
private cluster in a temporary directory (``initdb`` as the ``postgres`` user when run as
root). Each case counts, in the fake provider's ledger, sent, delivered, delivered twice,
reported by id and silently lost (always 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asgi_attribution import OutboxError, RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider
from asgi_attribution.transports import OutboxTransport
from asgi_attribution.transports.outbox import PostgresOutbox
from tests.support.asgi import KEY
from tests.support.postgres import server_url, table_name, unavailable

from .ledger import lead, tally
from .servers import free_port

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_retry_after=1, max_elapsed=120)


class PrivatePostgres:
    """A PostgreSQL cluster of this module's own, which a test may stop (SIGSTOP) at will."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            unavailable("no initdb binary (Debian: apt-get install postgresql)")
        self.bin = os.path.dirname(found[-1])
        self.root = tempfile.mkdtemp(prefix="pg26c-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.getuid() == 0:  # PostgreSQL refuses to run as root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root without a postgres user for a private cluster")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        command = [*self.as_owner, os.path.join(self.bin, tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        log = os.path.join(self.root, "server.log")
        self.run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "60", "start")

    def pids(self) -> list[int]:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            main = int(f.readline())
        children = subprocess.run(
            ["pgrep", "-P", str(main)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [main, *map(int, children)]

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, sig)

    def stop(self) -> None:
        self.resume()
        with contextlib.suppress(subprocess.CalledProcessError):
            self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed: pip install 'asgi-attribution[postgres]'")
    server = PrivatePostgres()
    yield server
    server.stop()


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_hung_postgresql_delivers_each_timed_out_append_once_and_recovers(
    private_pg: PrivatePostgres, provider: FakeProvider, url: str, caplog: Any
) -> None:
    store = PostgresOutbox(private_pg.url, table=table_name(), append_timeout=0.5, notify_wait=0.2)
    transport = OutboxTransport(store, api_key=KEY, base_url=url, retry=FAST, poll_interval=0.05)
    await transport.start()
    sent = [lead(0)]
    results = [await transport.send(sent[0])]
    private_pg.pause()
    try:
        during = [lead(i) for i in range(1, 41)]
        sent += during
        results += await asyncio.gather(*(transport.send(d) for d in during))
        await asyncio.sleep(1.5)  # well past append_timeout, as in the attack
    finally:
        private_pg.resume()
    assert results[0].durable and not any(r.durable for r in results[1:])
    # The server is back: the store takes appends again (probed, not "until shutdown").
    after = []
    for i in range(41, 80):
        after.append(lead(i))
        if (await transport.send(after[-1])).durable:
            break
        await asyncio.sleep(0.3)
    assert (await transport.send(lead(80))).durable
    sent += [*after, lead(80)]
    assert "takes appends again" in caplog.text
    await wait_for(lambda: tally(provider, sent).delivered == len(sent), "every event delivered")
    await transport.flush(timeout=30)
    await asyncio.sleep(1.0)  # a late copy from the table would be delivered by now
    await transport.aclose()
    counted = tally(provider, sent)
    print(counted.row("PostgreSQL SIGSTOP past append_timeout, SIGCONT"))
    assert counted.silently_lost == [] and counted.duplicates == 0


async def test_an_unstarted_trackers_first_call_waits_append_timeout_not_connect_timeout(
    private_pg: PrivatePostgres, provider: FakeProvider, url: str
) -> None:
    store = PostgresOutbox(private_pg.url, table=table_name(), append_timeout=0.5)
    tracker = Tracker("dub", api_key=KEY, base_url=url, outbox=store, retry=FAST)
    private_pg.pause()  # connections are accepted by the kernel, never answered
    try:
        started = time.monotonic()
        result = await tracker.track_lead(
            click_id="c1", event_name="Sign up", customer_external_id="first"
        )
        waited = time.monotonic() - started
    finally:
        private_pg.resume()
    assert result.status == "queued" and not result.durable  # in memory, said so
    assert waited < 4.0  # libpq's connect_timeout (5 s) would have held it longer
    await tracker.flush(timeout=30)
    await tracker.aclose()
    assert [lead["customerExternalId"] for lead in provider.leads()] == ["first"]


@pytest.fixture(scope="module")
def pg() -> str:
    return server_url()


async def test_within_waits_on_a_locked_table_no_longer_than_append_timeout(pg: str) -> None:
    import psycopg

    table = table_name()
    store = PostgresOutbox(pg, table=table, append_timeout=0.5)
    tracker = Tracker("dub", api_key=KEY, outbox=store, deliver=False)
    await tracker.start()
    blocker = await psycopg.AsyncConnection.connect(pg)
    conn = await psycopg.AsyncConnection.connect(pg)
    try:
        await conn.execute("SET statement_timeout = '7s'")
        await conn.commit()
        async with conn.transaction():  # without a lock: it stores, the setting comes back
            await tracker.track_lead(click_id="c", event_name="Sign up", customer_external_id="a")
            await tracker.track_lead(
                click_id="c", event_name="Sign up", customer_external_id="b", within=conn
            )
            shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
        assert shown == ("7s",)
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(OutboxError, match="append_timeout") as refused:
            await asyncio.wait_for(
                tracker.track_lead(
                    click_id="c", event_name="Sign up", customer_external_id="u", within=conn
                ),
                30,
            )
        waited = time.monotonic() - started
        assert "roll back" in str(refused.value) and waited < 25
        await conn.rollback()  # the caller's transaction is usable for its rollback...
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)  # ...and after it
    finally:
        await blocker.rollback()
        await blocker.close()
        await conn.close()
        await tracker.aclose()
    assert await store_rows(pg, table) == 2  # "a" and "b": nothing of the refused one


async def store_rows(pg: str, table: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn:
        found = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
    assert found is not None
    return int(found[0])
