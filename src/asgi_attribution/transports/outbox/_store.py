"""What every outbox store shares: the rows it keeps, the :class:`OutboxStore` contract, and group
commit.

A store keeps each event as plain JSON-able data (:class:`OutboxRow`: never a pickle, never an
API key) until it is delivered or becomes a dead letter; :class:`OutboxStatus` is what a status
reports, with the rules about retrying dead letters. :class:`~asgi_attribution.SQLiteOutbox`
keeps rows in a file on one machine, :class:`~asgi_attribution.RedisOutbox` in Redis across
machines, :class:`~asgi_attribution.PostgresOutbox` in a table next to your own;
:func:`open_store` picks one from an option value.

Group commit: the appends arriving together share one write (one commit, one round trip). Each
caller returns once the write holding its row succeeded, or raises what it raised. A store
writes with ``write`` (a coroutine: a thread's commit, a pipeline); a store whose commit is
cheap enough to run on the event loop (SQLite with ``synchronous="normal"``) also has
``write_now``: called on the loop with the first row of a loop iteration, then with the rows
added after it in that iteration, it commits them without waiting (True) or declines (False:
another writer holds the lock), and the rows then take ``write``. ``timeout`` bounds each row's
wait on ``write`` with one timer per batch, so a hung store never holds a signup longer.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, cast

from ..._events import Event, OrderKey, order_keys, validate_event
from .._base import Delivery, TrackResult, within_refused

__all__ = [
    "LIST_STATES",
    "NOT_RECORDED_OUTCOMES",
    "RETRY_REFUSED",
    "STATES",
    "WITHIN_REASON",
    "AppendBatcher",
    "AppendUnconfirmed",
    "ListState",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "State",
    "append_within",
    "open_store",
    "refused_retry",
    "restart_budget",
]


State = Literal["pending", "inflight", "delivered", "dead"]

STATES: tuple[State, ...] = ("pending", "inflight", "delivered", "dead")

#: What :meth:`OutboxStore.list` takes: a state, or ``not_recorded`` (delivered rows whose
#: outcome says the provider recorded nothing: ``duplicate`` or ``not_recorded``).
ListState = Literal["pending", "inflight", "delivered", "dead", "not_recorded"]

LIST_STATES: tuple[ListState, ...] = ("pending", "inflight", "delivered", "dead", "not_recorded")

NOT_RECORDED_OUTCOMES = ("duplicate", "not_recorded")

#: Dead letters that ``retry_dead`` refuses unless ``force=True``, with the reason.
RETRY_REFUSED = {
    "click_not_found": (
        "the provider reserved the (customer, event name) key when it answered 'click not "
        "found' and keeps it 7 days: a retry would be answered 200 with link: null and record "
        "nothing (force to send it anyway)"
    ),
}


# Not frozen, as TrackResult: a frozen init costs an object.__setattr__ per field, per signup.
@dataclass(slots=True)
class OutboxRow:
    """One event as the outbox stores it: plain JSON-able data, never a pickle or an API key.

    ``event`` is the event's ``model_dump(mode="json")`` without its ``kind``; ``handle`` is the
    store's own reference (a row id, a stream entry id). Times are the store's clock.
    ``error_code`` is the last error's code (``"http_503"``, ``"click_not_found"``);
    ``outcome`` and ``outcome_reason`` are what the provider's answer said was recorded
    (:attr:`TrackResult.outcome`), on delivered rows.

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
    error_code: str | None = None
    outcome: str | None = None
    outcome_reason: str | None = None

    @classmethod
    def from_delivery(cls, delivery: Delivery, *, now: float | None = None) -> OutboxRow:
        """The row for a new event, due at once (``now``: the store's clock)."""
        now = time.time() if now is None else now
        # The stored field values: every event field is a str, an int, None or JSON metadata,
        # so this equals model_dump(mode="json") (a test pins it) at a fraction of its cost.
        data = dict(delivery.event.__dict__)
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

    @property
    def order(self) -> tuple[OrderKey | None, OrderKey | None]:
        """The order keys the row waits on and holds (:func:`order_keys`), each
        ``(key space, "provider:value")`` or None.

        Example:
            >>> OutboxRow("evt_1", "dub", "sale", {"customer_external_id": "u1"}).order
            (('customer', 'dub:u1'), None)
        """
        keys = order_keys(self.kind, self.event)
        return (
            None if keys[0] is None else (keys[0][0], f"{self.provider}:{keys[0][1]}"),
            None if keys[1] is None else (keys[1][0], f"{self.provider}:{keys[1][1]}"),
        )

    def to_event(self) -> Event:
        """Rebuild and re-validate the event (raises :class:`InvalidEventError` if it no longer
        passes validation)."""
        return validate_event(self.kind, **self.event)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts by state, the age of the oldest undelivered event, and problems found.

    ``problems`` lists what is wrong with the store itself (a corrupt page, unreadable rows by
    id, a deleted file, a server that may evict); empty when healthy.

    Example:
        >>> status = OutboxStatus({"pending": 2, "inflight": 1, "delivered": 5, "dead": 0}, 3.5)
        >>> status.unfinished, status.healthy
        (3, True)
    """

    counts: dict[str, int]
    oldest_pending_age: float | None = None
    problems: tuple[str, ...] = ()
    #: Rows the store cannot read (a damaged file): their event ids, or ``row N`` when no
    #: index names the row.
    unreadable: tuple[str, ...] = ()

    @property
    def unfinished(self) -> int:
        """Events still to deliver: pending (including scheduled retries) or in flight."""
        return self.counts.get("pending", 0) + self.counts.get("inflight", 0)

    @property
    def healthy(self) -> bool:
        """True when no problem with the store was found."""
        return not self.problems


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


def refused_retry(row: OutboxRow) -> str | None:
    """Why ``retry_dead`` refuses this dead letter without ``force``, or None if it may retry.

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", error_code="click_not_found")
        >>> "7 days" in refused_retry(row)
        True
        >>> refused_retry(OutboxRow("evt_2", "dub", "lead", {}, error_code="http_401")) is None
        True
    """
    return RETRY_REFUSED.get(row.error_code or "")


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

    @property
    def lost(self) -> bool:
        """True once the store's storage is no longer the one it opened (a SQLite file deleted
        or replaced while open): what is left in it is lost with this process."""
        return False

    async def name_unconfirmed(self) -> bool:
        """At shutdown, after the storage failed under it (a disk giving I/O errors): log at
        ERROR, by id, the events left that it may not hold, and return True; else False (the
        default: nothing failed, or the store cannot tell)."""
        return False

    def check_within(self) -> None:
        """Raise ``TypeError`` unless :meth:`append_within` can insert rows in the caller's
        own database transaction (only a store in that database can: PostgreSQL).

        Example:
            >>> try:
            ...     SQLiteOutbox("events.db").check_within()
            ... except TypeError as exc:
            ...     print("outbox='postgresql://...'" in str(exc))
            True
        """
        raise within_refused(self)

    async def append_within(self, row: OutboxRow, connection: object) -> None:
        """Insert ``row`` on ``connection``, inside the caller's open transaction (their
        commit stores it). Stores that cannot raise ``TypeError`` (see :meth:`check_within`)."""
        self.check_within()

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


_Waiting = builtins.list[tuple[OutboxRow, "asyncio.Future[None]"]]


class AppendUnconfirmed(TimeoutError):
    """An append that gave up while its write was already on its way to the store.

    The write cannot be withdrawn any more, so the event may yet be stored: ``stored``
    resolves once the store answers, True if the write committed (the store delivers the
    event: the caller's copy must not be sent) or False if it did not (send the caller's
    copy). Rows still waiting for their write are withdrawn instead (a plain ``TimeoutError``).

    Example:
        >>> import asyncio
        >>> async def unconfirmed():
        ...     stored = asyncio.get_running_loop().create_future()
        ...     error = AppendUnconfirmed("not confirmed within 2s", stored)
        ...     stored.set_result(False)
        ...     return isinstance(error, TimeoutError), await error.stored
        >>> asyncio.run(unconfirmed())
        (True, False)
    """

    def __init__(self, message: str, stored: asyncio.Future[bool]) -> None:
        super().__init__(message)
        self.stored = stored


class AppendBatcher:
    """Group concurrent appends into one write.

    With ``timeout``, a row not written within that many seconds fails its caller: a row still
    waiting for a write is withdrawn (never sent: ``TimeoutError``), a row whose write is on
    its way raises :class:`AppendUnconfirmed`, which says later whether it was stored. A
    cancelled caller's row is withdrawn too, unless its write already left.

    Example:
        >>> import asyncio
        >>> from asgi_attribution import Delivery
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

    def __init__(
        self,
        write: Callable[[builtins.list[OutboxRow]], Awaitable[None]],
        *,
        write_now: Callable[[builtins.list[OutboxRow]], bool] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._write = write
        self._write_now = write_now
        self._timeout = timeout
        self._waiting: _Waiting = []  # for ``write``
        # The callers whose rows are in the write on its way, and whether it stored them.
        self._sent: dict[asyncio.Future[None], asyncio.Future[bool]] = {}
        # This iteration's rows for ``write_now``, per loop: a loop that ended before its
        # commit ran leaves only its own rows behind.
        self._gathering: dict[asyncio.AbstractEventLoop, _Waiting] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(self, row: OutboxRow) -> None:
        """Return once ``row`` is written (raise what the write raised)."""
        loop = asyncio.get_running_loop()
        write_now = self._write_now
        gathering = self._gathering.get(loop) if write_now is not None else None
        if write_now is not None and gathering is None:
            # The first row of this iteration is committed at once (a lone signup waits for
            # nothing); the rows after it gather until the iteration ends.
            self._gathering[loop] = []
            loop.call_soon(self._commit_now, loop)
            if write_now([row]):
                return
        future: asyncio.Future[None] = loop.create_future()
        if gathering is not None:
            gathering.append((row, future))
        else:
            self._queue([(row, future)], loop)
        try:
            await future
        except asyncio.CancelledError:
            self._withdraw({future})  # a caller that is gone does not leave its row queued
            raise

    def _commit_now(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._gathering.pop(loop)
        if not batch:
            return
        assert self._write_now is not None
        try:
            written = self._write_now([row for row, _ in batch])
        except Exception as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        if written:
            for _, future in batch:
                _settle(future, None)
        else:
            self._queue(batch, loop)

    def _queue(self, batch: _Waiting, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.extend(batch)
        if self._timeout is not None:
            # One timer for the batch: its rows fail (their callers go on) if still unwritten.
            futures = [future for _, future in batch]
            loop.call_later(self._timeout, self._expire, futures)
        # A task of an event loop that ended without finishing would never run again.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())

    def _withdraw(self, futures: set[asyncio.Future[None]]) -> int:
        """Take the rows of ``futures`` that still wait out of the queue; how many."""
        before = len(self._waiting)
        self._waiting = [(row, f) for row, f in self._waiting if f not in futures]
        return before - len(self._waiting)

    def _expire(self, futures: builtins.list[asyncio.Future[None]]) -> None:
        late = {future for future in futures if not future.done()}
        if not late:
            return
        self._withdraw(late)
        timeout = f"{self._timeout:g}s"
        for future in late:
            stored = self._sent.get(future)
            if stored is None:  # withdrawn: the store never sees it
                _settle(future, TimeoutError(f"not written within append_timeout ({timeout})"))
            else:
                message = f"not confirmed within append_timeout ({timeout}); the write is sent"
                _settle(future, AppendUnconfirmed(message, stored))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            stored: asyncio.Future[bool] = loop.create_future()
            for _, future in batch:
                self._sent[future] = stored
            try:
                await self._write([row for row, _ in batch])
            except Exception as exc:
                stored.set_result(False)
                for _, future in batch:
                    _settle(future, exc)
            except BaseException:  # the loop is ending: its callers are cancelled with it
                stored.set_result(False)
                for _, future in batch:
                    future.cancel()
                raise
            else:
                stored.set_result(True)
                for _, future in batch:
                    _settle(future, None)
            finally:
                for _, future in batch:
                    self._sent.pop(future, None)

    async def wait(self) -> None:
        """Let the write in progress finish (before closing the store)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return  # its caller is gone with its event loop; the row itself was still written
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


#: The ``reason`` of an event appended inside the caller's transaction.
WITHIN_REASON = "stored when your transaction commits"


async def append_within(store: OutboxStore, delivery: Delivery, connection: object) -> TrackResult:
    """Store ``delivery``'s event in ``store`` as part of the caller's open transaction.

    ``store`` is a :class:`PostgresOutbox` (the tracker's ``transport.store``; another store
    raises ``TypeError``); ``connection`` a psycopg ``AsyncConnection``, an asyncpg
    ``Connection``, or a SQLAlchemy ``AsyncConnection`` / ``AsyncSession`` (driver
    ``postgresql+psycopg`` or ``postgresql+asyncpg``), in the same database. The row is
    inserted on that connection: your commit stores the event and wakes the workers
    (``NOTIFY``), your rollback discards it, and no worker can see it before.

    The result is ``queued`` with ``durable=False`` and ``reason`` :data:`WITHIN_REASON`:
    nothing is stored yet when this returns. Once your ``commit()`` returns without error the
    event is as durable as your own rows; :meth:`PostgresOutbox.is_stored` checks afterwards.

    Example:
        >>> async def signup(conn, email):  # doctest: +SKIP
        ...     async with conn.transaction():
        ...         await conn.execute("INSERT INTO users (email) VALUES (%s)", (email,))
        ...         lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id=email)
        ...         result = await append_within(store, Delivery(lead, DUB), conn)
        ...     return result  # committed here: the lead is stored with the user
    """
    store.check_within()
    await store.append_within(OutboxRow.from_delivery(delivery), connection)
    return TrackResult("queued", delivery.event, reason=WITHIN_REASON, durable=False)
