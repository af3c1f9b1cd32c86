"""``asgi-attribution outbox list``: the events of an outbox, as text or JSON Lines.

Undelivered events by state (pending, in flight, dead letters), and ``not-recorded``: delivered
events whose provider answered 2xx without recording them (a duplicate lead, a sale with no
customer), with the outcome and its reason. Rows come from the store's read-only
:meth:`OutboxStore.list_rows`; a store that lists dead letters only makes asking for another
state a usage error (exit code 2) that says ``--state dead`` works.
"""

from __future__ import annotations

import json
from typing import Any

from ..transports import OutboxRow, OutboxStore
from ..transports.outbox.store import LIST_STATES, STATES, ListState
from .common import EXIT_OK, UsageError

__all__ = ["LISTABLE", "NOT_RECORDED", "list_rows", "row_json", "row_text"]

#: ``--state not-recorded``: delivered, but the provider recorded nothing.
NOT_RECORDED = "not-recorded"
_UNDELIVERED: tuple[str, ...] = tuple(s.replace("_", "-") for s in STATES if s != "delivered")
#: The states ``--state`` takes, as spelled on the command line (``all`` is every one of them
#: but ``not-recorded``).
LISTABLE: tuple[str, ...] = _UNDELIVERED + (
    (NOT_RECORDED,) if "not_recorded" in LIST_STATES else ()
)


def row_json(row: OutboxRow) -> str:
    """One JSON Lines line for ``row``: plain data, no API key (the store never has one).

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {"click_id": "c"}, state="dead",
        ...                 attempts=3, last_error="HTTP 401 unauthorized")
        >>> data = json.loads(row_json(row))
        >>> data["event_id"], data["state"], data["last_error"], data["event"]["click_id"]
        ('evt_1', 'dead', 'HTTP 401 unauthorized', 'c')
    """
    data: dict[str, Any] = {
        "event_id": row.event_id,
        "state": row.state,
        "provider": row.provider,
        "kind": row.kind,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "error_code": row.error_code,
        "outcome": row.outcome,
        "outcome_reason": row.outcome_reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next_attempt_at": row.next_attempt_at,
        "event": row.event,
    }
    return json.dumps(data)


def row_text(row: OutboxRow, with_state: bool = False) -> str:
    """One line for a person: the event id, provider and kind, and its last error (or, for a
    delivered event, the outcome and its reason).

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", last_error="HTTP 401")
        >>> row_text(row)
        'evt_1  dub lead  HTTP 401'
        >>> row_text(OutboxRow("evt_2", "pimms", "sale", {}), with_state=True)
        'evt_2  pending  pimms sale  -'
        >>> row_text(OutboxRow("evt_3", "dub", "sale", {}, state="delivered",
        ...          outcome="not_recorded", outcome_reason="no_customer"), with_state=True)
        'evt_3  delivered  dub sale  outcome not_recorded (no_customer)'
    """
    state = f"  {row.state.replace('_', '-')}" if with_state else ""
    detail = row.last_error or "-"
    if row.state == "delivered" and row.outcome is not None:
        reason = f" ({row.outcome_reason})" if row.outcome_reason else ""
        detail = f"outcome {row.outcome}{reason}"
    return f"{row.event_id}{state}  {row.provider} {row.kind}  {detail}"


def _states(state: str) -> list[ListState]:
    chosen = _UNDELIVERED if state == "all" else (state,)
    found: list[ListState] = []
    for name in chosen:
        spelled = name.replace("-", "_")
        for known in LIST_STATES:
            if known == spelled:
                found.append(known)
    return found


async def list_rows(store: OutboxStore, state: str, limit: int, *, as_json: bool = False) -> int:
    """Print the rows of ``store`` in ``state`` (one of :data:`LISTABLE`, or ``"all"``).

    Example:
        >>> import asyncio, os, tempfile
        >>> from asgi_attribution.transports import SQLiteOutbox
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> asyncio.run(list_rows(store, "not-recorded", 10))  # empty: nothing printed
        0
    """
    wanted = _states(state)
    if wanted != ["dead"] and type(store).list is OutboxStore.list:
        # Checked before the store is opened: a usage error touches nothing.
        raise UsageError(
            f"{store.description} cannot list {state} events yet (it lists dead letters only): "
            "use --state dead"
        )
    async with store:
        rows = await store.list_rows(wanted, limit)
    for row in rows:
        print(row_json(row) if as_json else row_text(row, with_state=wanted != ["dead"]))
    return EXIT_OK
