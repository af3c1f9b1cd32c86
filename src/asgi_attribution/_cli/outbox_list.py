"""``asgi-attribution outbox list``: the undelivered events of an outbox, as text or JSON Lines.

Dead letters come from :meth:`OutboxStore.list_dead`. Other states need a store with a
read-only ``list_rows(states, limit)``; with a store that has none, asking for them is a usage
error (exit code 2) that says ``--state dead`` works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..transports import OutboxRow, OutboxStore
from ..transports.outbox.store import STATES
from .common import EXIT_OK, UsageError

__all__ = ["LISTABLE", "list_rows", "row_json", "row_text"]

#: The states ``--state`` takes, as spelled on the command line (every state but delivered).
LISTABLE: tuple[str, ...] = tuple(s.replace("_", "-") for s in STATES if s != "delivered")


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
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next_attempt_at": row.next_attempt_at,
        "event": row.event,
    }
    return json.dumps(data)


def row_text(row: OutboxRow, with_state: bool = False) -> str:
    """One line for a person: the event id, provider and kind, and its last error.

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", last_error="HTTP 401")
        >>> row_text(row)
        'evt_1  dub lead  HTTP 401'
        >>> row_text(OutboxRow("evt_2", "pimms", "sale", {}), with_state=True)
        'evt_2  pending  pimms sale  -'
    """
    state = f"  {row.state.replace('_', '-')}" if with_state else ""
    return f"{row.event_id}{state}  {row.provider} {row.kind}  {row.last_error or '-'}"


async def _read(store: OutboxStore, states: Sequence[str], limit: int) -> list[OutboxRow]:
    if list(states) == ["dead"]:
        return await store.list_dead(limit)
    reader = getattr(store, "list_rows", None)
    rows: list[OutboxRow] = await reader(list(states), limit)  # type: ignore[misc]
    return rows


async def list_rows(store: OutboxStore, state: str, limit: int, *, as_json: bool = False) -> int:
    """Print the rows of ``store`` in ``state`` (one of :data:`LISTABLE`, or ``"all"``).

    Example:
        >>> import asyncio, os, tempfile
        >>> from asgi_attribution.transports import SQLiteOutbox
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> asyncio.run(list_rows(store, "dead", 10))  # an empty outbox: nothing printed
        0
    """
    wanted = [s.replace("-", "_") for s in (LISTABLE if state == "all" else (state,))]
    if wanted != ["dead"] and not callable(getattr(store, "list_rows", None)):
        # Checked before the store is opened: a usage error touches nothing.
        raise UsageError(
            f"{store.description} cannot list {state} events yet (it lists dead letters only): "
            "use --state dead"
        )
    async with store:
        rows = await _read(store, wanted, limit)
    for row in rows:
        print(row_json(row) if as_json else row_text(row, with_state=wanted != ["dead"]))
    return EXIT_OK
