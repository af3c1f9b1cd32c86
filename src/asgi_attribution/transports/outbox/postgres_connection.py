"""The caller's database connection, for appends that commit with the caller's transaction.

:func:`psycopg_connection` accepts a psycopg 3 ``AsyncConnection``, a SQLAlchemy
``AsyncConnection`` or ``AsyncSession`` (on the ``postgresql+psycopg`` driver), and returns the
psycopg connection underneath, checked to be inside (or about to start) a transaction that the
caller will commit. SQLAlchemy is never imported unless the object given comes from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["ACCEPTED", "psycopg_connection"]

#: The connection types an append within a transaction takes, for messages.
ACCEPTED = (
    "a psycopg.AsyncConnection, or a SQLAlchemy AsyncConnection or AsyncSession"
    " (driver postgresql+psycopg)"
)


async def psycopg_connection(connection: object) -> AsyncConnection[Any]:
    """The psycopg ``AsyncConnection`` behind ``connection``, inside the caller's transaction.

    - a psycopg ``AsyncConnection``: inside ``async with conn.transaction():``, or without
      autocommit (psycopg then opens the transaction that your ``await conn.commit()`` ends);
    - a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``: its transaction is begun if needed,
      as SQLAlchemy's own autobegin does, and ended by your ``commit()`` or ``rollback()``.

    Raises :class:`TypeError` naming the accepted types for anything else (a sync connection, an
    asyncpg-backed engine), and :class:`ValueError` for a connection that would commit the row
    on its own (autocommit outside a transaction block) or whose transaction already failed.

    Example:
        >>> import asyncio
        >>> asyncio.run(psycopg_connection("postgresql://app@db/app"))
        Traceback (most recent call last):
        ...
        TypeError: append_within needs a psycopg.AsyncConnection, or a SQLAlchemy ...
    """
    module = type(connection).__module__
    if module.startswith("sqlalchemy"):
        return await _from_sqlalchemy(connection)
    if not _is_psycopg_async(connection):
        raise TypeError(f"append_within needs {ACCEPTED}, got {_name(connection)}")
    from psycopg import AsyncConnection
    from psycopg.pq import TransactionStatus

    assert isinstance(connection, AsyncConnection)
    status = connection.info.transaction_status
    if status == TransactionStatus.IDLE and connection.autocommit:
        raise ValueError(
            "append_within: this autocommit connection has no transaction open, so the event"
            " would commit on its own; use `async with conn.transaction():` around your writes"
        )
    if status == TransactionStatus.INERROR:
        raise ValueError(
            "append_within: the connection's transaction has failed; roll it back first"
        )
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise ValueError(f"append_within: the connection is not usable ({status.name})")
    return connection


async def _from_sqlalchemy(obj: Any) -> AsyncConnection[Any]:
    from sqlalchemy.ext.asyncio import AsyncConnection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(obj, AsyncSession):
        conn = await obj.connection()  # begins the session's transaction if none is open
    elif isinstance(obj, SAConnection):
        conn = obj
        if not conn.in_transaction():
            await conn.begin()  # what SQLAlchemy's autobegin does; your commit() ends it
    else:
        raise TypeError(f"append_within needs {ACCEPTED}, got {_name(obj)}")
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not _is_psycopg_async(driver):
        raise TypeError(
            f"append_within needs {ACCEPTED}; this engine's driver gives {_name(driver)}:"
            " create it with a postgresql+psycopg:// URL"
        )
    return await psycopg_connection(driver)


def _is_psycopg_async(obj: object) -> bool:
    try:
        from psycopg import AsyncConnection
    except ImportError:  # without psycopg nothing can be one
        return False
    return isinstance(obj, AsyncConnection)


def _name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
