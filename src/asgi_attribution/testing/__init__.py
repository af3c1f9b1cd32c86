"""Test helpers: capture every tracked event instead of delivering it, and a local provider.

In a test of your app, wrap the requests in :func:`capture_events` (or use the pytest fixture
``attribution_events``, registered automatically): any :class:`~asgi_attribution.Tracker` in the
process records its events there, so the app's code is untouched and no HTTP is mocked.

:class:`FakeProvider` (a fault-injecting local Dub/PIMMS API) and :func:`serve_in_thread` (a
uvicorn server in a thread) load on first use: importing this module costs neither.

Example:
    >>> from asgi_attribution import testing
    >>> with testing.capture_events() as events:
    ...     pass  # drive your app here
    >>> events.leads, testing.Faults().error_rate
    ([], 0.0)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..transports._memory import MemoryTransport
from ._capture import CapturedEvents, capture_events

__all__ = [
    "CapturedEvents",
    "FakeProvider",
    "Faults",
    "MemoryTransport",
    "Received",
    "capture_events",
    "serve_in_thread",
    "sign_webhook",
]


if TYPE_CHECKING:
    from ._server import serve_in_thread
    from .fake_provider import FakeProvider, Faults, Received
    from .fake_provider._webhooks import sign_webhook

# Loaded on first access (PEP 562), so capturing events never imports the fake server or uvicorn.
# Hidden from type checkers, which see the imports above and so still catch a misspelt name.
_LAZY = {
    "FakeProvider": ".fake_provider",
    "Faults": ".fake_provider",
    "Received": ".fake_provider",
    "serve_in_thread": "._server",
    "sign_webhook": ".fake_provider._webhooks",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
