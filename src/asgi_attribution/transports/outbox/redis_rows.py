"""Rows as Redis stream entries (one JSON field), and small helpers of the Redis outbox."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..._exceptions import OutboxError
from .rows import OutboxRow, State

__all__ = ["dump_row", "entry_time", "load_row", "require_redis", "safe_url"]


def require_redis() -> Any:
    """``redis.asyncio``, or an :class:`OutboxError` naming the extra to install."""
    try:
        import redis.asyncio
    except ImportError:
        raise OutboxError(
            "the Redis outbox needs redis-py: pip install 'asgi-attribution[redis]'"
        ) from None
    return redis.asyncio


def safe_url(url: str) -> str:
    """``url`` without its password.

    Example:
        >>> safe_url("redis://user:secret@cache:6379/0")
        'redis://user:***@cache:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def entry_time(entry_id: str) -> float:
    """The server time (seconds) at which a stream entry was added.

    Example:
        >>> entry_time("1800000000123-0")
        1800000000.123
    """
    return int(entry_id.split("-")[0]) / 1000


def dump_row(row: OutboxRow) -> str:
    """The JSON kept in an entry's ``row`` field.

    Example:
        >>> load_row("1-0", {"row": dump_row(OutboxRow("evt_1", "dub", "lead", {}))}).event_id
        'evt_1'
    """
    data = {
        "event_id": row.event_id,
        "provider": row.provider,
        "kind": row.kind,
        "event": row.event,
        "attempts": row.attempts,
        "first_attempt_at": row.first_attempt_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_error": row.last_error,
        "error_code": row.error_code,
        "outcome": row.outcome,
        "outcome_reason": row.outcome_reason,
        "next_attempt_at": row.next_attempt_at,
    }
    return json.dumps(data, separators=(",", ":"))


def load_row(entry_id: str, fields: dict[str, str], state: State = "pending") -> OutboxRow:
    """The row of a stream entry (``handle`` is the entry id)."""
    data = json.loads(fields["row"])
    return OutboxRow(
        event_id=data["event_id"],
        provider=data["provider"],
        kind=data["kind"],
        event=data["event"],
        state=state,
        attempts=int(data.get("attempts", 0)),
        last_error=data.get("last_error"),
        created_at=float(data.get("created_at", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        first_attempt_at=data.get("first_attempt_at"),
        next_attempt_at=float(data.get("next_attempt_at") or 0.0),
        handle=entry_id,
        error_code=data.get("error_code"),
        outcome=data.get("outcome"),
        outcome_reason=data.get("outcome_reason"),
    )
