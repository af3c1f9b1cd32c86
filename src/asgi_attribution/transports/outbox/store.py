"""The outbox's store: the :class:`OutboxStore` contract, and helpers for stores.

A store keeps each event as plain JSON-able data (:class:`OutboxRow`, from :mod:`.rows`) until
it is delivered or becomes a dead letter. :class:`SQLiteOutbox` keeps them in a file on one
machine, :class:`RedisOutbox` in Redis across machines; :func:`open_store` picks one from an
option value.
"""

from __future__ import annotations

import abc
import builtins
import inspect
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

from .rows import (
    LIST_STATES,
    STATES,
    ListState,
    OutboxRow,
    OutboxStatus,
    State,
    refused_retry,
    restart_budget,
)

__all__ = [
    "LIST_STATES",
    "STATES",
    "ListState",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "State",
    "open_store",
    "refused_retry",
    "restart_budget",
]

# The stores open_store can build from an option value (see OutboxStore.option_prefixes).
_BACKENDS: list[type[OutboxStore]] = []


class OutboxStore(abc.ABC):
    """Where an outbox keeps its events. Implement it to add a backend.

    A store must be safe to share between processes: :meth:`claim` hands a row to one claimant
    until the lease expires, and the ``delivered``/``retry_later``/``dead`` calls of a claimant
    whose lease was taken over may be ignored. All methods are coroutines; nothing may wait on
    the event loop (SQLite's commits on the loop take no lock they would wait for). Times given
    to and read from a store (``at``, the row's times) are in the store's own clock,
    :meth:`now`, never the caller's wall clock.

    Example:
        >>> import asyncio, os, tempfile
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> async def report():
        ...     async with store:
        ...         return (await store.status()).counts
        >>> asyncio.run(report())
        {'pending': 0, 'inflight': 0, 'delivered': 0, 'dead': 0}
    """

    #: A short description for messages (a path, a URL without password).
    description = "outbox"
    #: How :func:`open_store` recognises an option value for this class, which it then calls
    #: with that value: text prefixes such as ``"redis://"``; ``""`` takes any value (a path).
    option_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Whether an appended row survives a crash of the process and of the store's host. A
    #: store sets it False at open when it cannot promise that (Redis without AOF, or with
    #: eviction allowed); appends then return ``durable=False``.
    durable: bool = True
    #: Seconds within which :meth:`append` returns or raises by itself, or None: the outbox
    #: then bounds each append with a timer of its own (``append_timeout``).
    append_bound: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.option_prefixes:
            _BACKENDS.append(cls)

    async def __aenter__(self) -> OutboxStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def now(self) -> float:
        """The store's clock (seconds, comparable to Unix time): due times, leases, budgets.

        The default reads the wall clock; stores override it with a clock that a stepped or
        skewed wall clock cannot move (SQLite: anchored to ``time.monotonic()``; Redis ``TIME``).
        """
        return time.time()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (and create the schema if allowed); idempotent. Raise :class:`OutboxError`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    @abc.abstractmethod
    async def append(self, row: OutboxRow) -> None:
        """Store a new pending row durably before returning; raise if it may not be stored."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        """Take up to ``limit`` due rows for ``lease`` seconds; ``attempts`` counts this one."""

    @abc.abstractmethod
    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered, keeping ``row.outcome`` and ``row.outcome_reason``."""

    @abc.abstractmethod
    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Give a claimed row back, due again at ``at`` (store time), with its last error (and
        ``row.error_code``)."""

    @abc.abstractmethod
    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep a claimed row as a dead letter with its last error (and ``row.error_code``)."""

    @abc.abstractmethod
    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Give claimed rows back at once, as if not attempted (shutdown, a paused outbox)."""

    @abc.abstractmethod
    async def unfinished(self) -> int:
        """How many rows are pending or in flight."""

    @abc.abstractmethod
    async def status(self) -> OutboxStatus:
        """Counts by state, the oldest undelivered event's age, and problems found."""

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> builtins.list[OutboxRow]:
        """Dead letters, oldest first."""

    async def list(self, state: ListState = "dead", limit: int = 100) -> builtins.list[OutboxRow]:
        """Rows in ``state`` (one of :data:`LIST_STATES`), oldest first.

        ``"not_recorded"`` lists delivered rows whose outcome is ``duplicate`` or
        ``not_recorded``: the provider answered 2xx and recorded nothing. This default lists
        dead letters only; stores override it.
        """
        if state not in LIST_STATES:
            raise ValueError(f"state must be one of {', '.join(LIST_STATES)}, got {state!r}")
        if state == "dead":
            return await self.list_dead(limit)
        raise NotImplementedError(f"{type(self).__name__} cannot list {state} rows")

    async def list_rows(
        self, states: Sequence[ListState], limit: int = 100
    ) -> builtins.list[OutboxRow]:
        """Rows in any of ``states``, up to ``limit`` in all (for ``outbox list``)."""
        rows: builtins.list[OutboxRow] = []
        for state in states:
            rows.extend(await self.list(state, limit - len(rows)))
            if len(rows) >= limit:
                break
        return rows

    @abc.abstractmethod
    async def retry_dead(
        self, event_ids: Sequence[str] | None = None, *, force: bool = False
    ) -> int:
        """Put dead letters (all, or those with ``event_ids``) back to pending with a fresh
        budget; return how many. Dead letters :func:`refused_retry` names stay dead (and are
        logged with the reason) unless ``force``."""

    @abc.abstractmethod
    async def purge_delivered(self, older_than: float) -> int:
        """Delete delivered rows last updated more than ``older_than`` seconds ago, in small
        batches that never hold a lock for long."""

    async def maintain(self) -> None:
        """Housekeeping the delivery loop runs now and then (retention, dead consumers)."""
        return None

    async def vacuum(self) -> None:
        """Give free space back to the filesystem where the store can (SQLite ``VACUUM``)."""
        return None


def open_store(
    outbox: str | os.PathLike[str] | OutboxStore,
    *,
    append_timeout: float | None = None,
    **options: Any,
) -> OutboxStore:
    """A store from an option value: a store as is, a ``redis://`` URL, or a SQLite file path.

    Nothing is opened here (no file, no connection) until the store's ``open``. The options
    (``append_timeout``, ``retention``, ``allow_eviction``...) are passed to the store built
    from a value; None means the store's default. A store given as is keeps its own
    ``append_timeout``; other options for it, or options its class does not take, raise
    :class:`TypeError`.

    Example:
        >>> type(open_store("events.db")).__name__
        'SQLiteOutbox'
        >>> open_store("redis://127.0.0.1:6379/0", allow_eviction=True).allow_eviction
        True
        >>> open_store("events.db", allow_eviction=True)
        Traceback (most recent call last):
        ...
        TypeError: SQLiteOutbox does not take allow_eviction
    """
    given = {name: value for name, value in options.items() if value is not None}
    if isinstance(outbox, OutboxStore):
        if given:
            raise TypeError(f"{', '.join(given)}: set them on the store {outbox.description}")
        return outbox
    text = os.fspath(outbox)
    # The store whose longest prefix matches (the backends register themselves on import; the
    # package imports them all, so this module never imports them: no import circle).
    matches = [
        (len(p), cls) for cls in _BACKENDS for p in cls.option_prefixes if text.startswith(p)
    ]
    if not matches:
        raise ValueError(f"no outbox store takes {text!r}")
    backend = max(matches, key=lambda m: m[0])[1]
    takes = inspect.signature(backend).parameters
    for name in given:
        if name not in takes:
            raise TypeError(f"{backend.__name__} does not take {name}")
    if append_timeout is not None and "append_timeout" in takes:
        given["append_timeout"] = append_timeout
    build = cast("Callable[..., OutboxStore]", backend)
    return build(text, **given)
