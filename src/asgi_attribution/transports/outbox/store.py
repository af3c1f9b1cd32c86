"""The outbox's store: the rows it keeps, the :class:`OutboxStore` contract, and helpers.

A store keeps each event as plain JSON-able data (:class:`OutboxRow`) until it is delivered or
becomes a dead letter. :class:`SQLiteOutbox` keeps them in a file on one machine,
:class:`RedisOutbox` in Redis across machines; :func:`open_store` picks one from an option value.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, cast

from ...events import Event, validate_event
from ..base import Delivery

__all__ = [
    "STATES",
    "AppendBatcher",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "State",
    "open_store",
    "restart_budget",
]

# The stores open_store can build from an option value (see OutboxStore.option_prefixes).
_BACKENDS: list[type[OutboxStore]] = []

State = Literal["pending", "inflight", "delivered", "dead"]
STATES: tuple[State, ...] = ("pending", "inflight", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event as the outbox stores it: plain JSON-able data, never a pickle or an API key.

    ``event`` is the event's ``model_dump(mode="json")`` without its ``kind``; ``handle`` is the
    store's own reference (a row id, a stream entry id).

    Example:
        >>> from asgi_attribution import DUB, LeadEvent
        >>> row = OutboxRow.from_delivery(Delivery(
        ...     LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u1"), DUB))
        >>> row.kind, row.provider, row.state, row.event["click_id"]
        ('lead', 'dub', 'pending', 'c1')
    """

    event_id: str
    provider: str
    kind: str
    event: dict[str, Any]
    state: State = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    first_attempt_at: float | None = None
    handle: str = field(default="", compare=False)

    @classmethod
    def from_delivery(cls, delivery: Delivery, *, now: float | None = None) -> OutboxRow:
        """The row for a new event, due at once."""
        now = time.time() if now is None else now
        data = delivery.event.model_dump(mode="json")
        kind = str(data.pop("kind"))
        return cls(
            event_id=delivery.event.event_id,
            provider=delivery.provider.name,
            kind=kind,
            event=data,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )

    def to_event(self) -> Event:
        """Rebuild and re-validate the event (raises :class:`InvalidEventError` if it no longer
        passes validation)."""
        return validate_event(self.kind, **self.event)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts by state and the age of the oldest undelivered event, in seconds.

    Example:
        >>> status = OutboxStatus({"pending": 2, "inflight": 1, "delivered": 5, "dead": 0}, 3.5)
        >>> status.unfinished
        3
    """

    counts: dict[str, int]
    oldest_pending_age: float | None = None

    @property
    def unfinished(self) -> int:
        """Events still to deliver: pending (including scheduled retries) or in flight."""
        return self.counts.get("pending", 0) + self.counts.get("inflight", 0)


class OutboxStore(abc.ABC):
    """Where an outbox keeps its events. Implement it to add a backend.

    A store must be safe to share between processes: :meth:`claim` hands a row to one claimant
    until the lease expires, and the ``delivered``/``retry_later``/``dead`` calls of a claimant
    whose lease was taken over may be ignored. All methods are coroutines; nothing may block the
    event loop.

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.option_prefixes:
            _BACKENDS.append(cls)

    async def __aenter__(self) -> OutboxStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (and create the schema if allowed); idempotent. Raise :class:`OutboxError`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    @abc.abstractmethod
    async def append(self, row: OutboxRow) -> None:
        """Store a new pending row durably before returning."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> list[OutboxRow]:
        """Take up to ``limit`` due rows for ``lease`` seconds; ``attempts`` counts this one."""

    @abc.abstractmethod
    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered."""

    @abc.abstractmethod
    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Give a claimed row back, due again at ``at`` (Unix time), with its last error."""

    @abc.abstractmethod
    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep a claimed row as a dead letter with its last error."""

    @abc.abstractmethod
    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Give claimed rows back at once, as if not attempted (used at shutdown)."""

    @abc.abstractmethod
    async def unfinished(self) -> int:
        """How many rows are pending or in flight."""

    @abc.abstractmethod
    async def status(self) -> OutboxStatus:
        """Counts by state and the oldest undelivered event's age."""

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those with ``event_ids``) back to pending with a fresh
        budget; return how many."""

    @abc.abstractmethod
    async def purge_delivered(self, older_than: float) -> int:
        """Delete delivered rows last updated more than ``older_than`` seconds ago."""


def open_store(outbox: str | os.PathLike[str] | OutboxStore) -> OutboxStore:
    """A store from an option value: a store as is, a ``redis://`` URL, or a SQLite file path.

    Nothing is opened here (no file, no connection) until the store's ``open``.

    Example:
        >>> type(open_store("events.db")).__name__
        'SQLiteOutbox'
        >>> type(open_store("redis://127.0.0.1:6379/0")).__name__
        'RedisOutbox'
    """
    if isinstance(outbox, OutboxStore):
        return outbox
    text = os.fspath(outbox)
    # The store whose longest prefix matches (the backends register themselves on import; the
    # package imports them all, so this module never imports them: no import circle).
    matches = [
        (len(p), cls) for cls in _BACKENDS for p in cls.option_prefixes if text.startswith(p)
    ]
    if not matches:
        raise ValueError(f"no outbox store takes {text!r}")
    backend = cast("Callable[[str], OutboxStore]", max(matches, key=lambda m: m[0])[1])
    return backend(text)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return  # its caller is gone with its event loop; the row itself was still written
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class AppendBatcher:
    """Group concurrent appends into one write (one commit, one pipeline round trip).

    Each caller returns once the write holding its row succeeded; the rows that arrive while a
    write runs share the next one, so bursts cost one commit instead of one each.

    Example:
        >>> import asyncio
        >>> writes = []
        >>> async def write(rows):
        ...     writes.append(len(rows))
        >>> batcher = AppendBatcher(write)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def burst():
        ...     rows = [OutboxRow.from_delivery(Delivery(lead, DUB)) for _ in range(5)]
        ...     await asyncio.gather(*(batcher.add(row) for row in rows))
        >>> asyncio.run(burst())
        >>> writes  # five appends at once, one write
        [5]
    """

    def __init__(self, write: Callable[[list[OutboxRow]], Awaitable[None]]) -> None:
        self._write = write
        self._waiting: list[tuple[OutboxRow, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, row: OutboxRow) -> None:
        """Return once ``row`` is written (raise what the write raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((row, future))
        # A task of an event loop that ended without finishing would never run again.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._write([row for row, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    _settle(future, exc)
            else:
                for _, future in batch:
                    _settle(future, None)

    async def wait(self) -> None:
        """Let the write in progress finish (before closing the store)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def restart_budget(row: OutboxRow, now: float) -> OutboxRow:
    """A dead letter sent back to pending: a fresh budget of attempts and time.

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", attempts=40)
        >>> fresh = restart_budget(row, now=1_800_000_000.0)
        >>> fresh.state, fresh.attempts, fresh.next_attempt_at
        ('pending', 0, 1800000000.0)
    """
    return replace(
        row,
        state="pending",
        attempts=0,
        first_attempt_at=None,
        next_attempt_at=now,
        updated_at=now,
    )
