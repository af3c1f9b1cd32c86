"""The PostgreSQL server the outbox tests use: the one ``scripts/test-postgres`` started.

``ASGI_ATTRIBUTION_TEST_POSTGRES_URL`` names it (and ``ASGI_ATTRIBUTION_TEST_POSTGRES_DATA`` its
data directory, for the restart test). Without them the tests skip on a developer's machine and
FAIL when ``CI`` is set, as the Redis tests do.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

URL_ENV = "ASGI_ATTRIBUTION_TEST_POSTGRES_URL"
DATA_ENV = "ASGI_ATTRIBUTION_TEST_POSTGRES_DATA"
START = 'eval "$(scripts/test-postgres start)"'


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run)")
    pytest.skip(reason)


def server_url() -> str:
    """The test server's URL, checked to answer (or skip / fail with the reason)."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed: pip install 'asgi-attribution[postgres]'")
    url = os.environ.get(URL_ENV)
    if not url:
        unavailable(f"no PostgreSQL server for the tests: {URL_ENV} is not set ({START})")
    assert url is not None
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        unavailable(f"the PostgreSQL server at {url} does not answer: {exc}")
    return url


def table_name(prefix: str = "t") -> str:
    """A fresh outbox table name, so tests never see each other's rows."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _pg_ctl() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [shutil.which("pg_ctl")]
    if not found or found[-1] is None:
        unavailable("no pg_ctl binary (Debian: apt-get install postgresql)")
    return str(found[-1])


def restart_server(mode: str = "fast") -> None:
    """``pg_ctl restart`` the test server (as the owner of its data directory)."""
    data = os.environ.get(DATA_ENV)
    if not data:
        unavailable(f"{DATA_ENV} is not set: cannot restart the server ({START})")
    assert data is not None
    log = os.path.join(os.path.dirname(data), "server.log")
    # -l: the new server must not inherit (and hold open) our pipes.
    command = [_pg_ctl(), "-D", data, "-l", log, "-m", mode, "-w", "-t", "60", "restart"]
    owner = pwd.getpwuid(os.stat(data).st_uid).pw_name
    if owner != pwd.getpwuid(os.getuid()).pw_name:
        command = ["runuser", "-u", owner, "--", *command]
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90
    )


async def users_table(url: str) -> AsyncIterator[str]:
    """A users table of the app's own, in the same database as the outbox; dropped after."""
    import psycopg

    name = table_name("users")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, email text UNIQUE)")
        yield name
        await conn.execute(f"DROP TABLE {name}")
