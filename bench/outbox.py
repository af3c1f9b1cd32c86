"""Durable outbox cost (issue 4): events/s appended, and the handler-visible latency it adds.

Measured only once the package has an outbox transport; until then the table says
"not yet available".
"""

from __future__ import annotations

import importlib.util
from typing import Any


def available() -> bool:
    return any(
        importlib.util.find_spec(f"asgi_attribution.transports.{name}") is not None
        for name in ("outbox_sqlite", "outbox_redis", "outbox")
    )


def run() -> dict[str, Any]:
    if not available():
        return {"available": False, "note": "not yet available: no outbox transport in the package"}
    return {
        "available": True,
        "note": "outbox transport present but not yet measured by this bench version",
    }
