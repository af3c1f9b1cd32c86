"""Lifespan for the tracker: started at startup, drained at shutdown, whatever the app does.

When the app does not take part in lifespan (Django raises before its first receive; many
apps just return), the middleware completes the handshake with the server itself, so the
tracker is still started and drained.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tracker import Tracker

__all__ = ["run_lifespan"]

logger = logging.getLogger("asgi_attribution")


class _Seen:
    """What passed between the server and the app during one lifespan."""

    __slots__ = ("shutdown", "shutdown_answered", "startup", "startup_answered")

    def __init__(self) -> None:
        self.startup = self.startup_answered = False
        self.shutdown = self.shutdown_answered = False


async def run_lifespan(
    app: ASGIApp,
    tracker: Tracker,
    scope: Scope,
    receive: Receive,
    send: Send,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``app``'s lifespan; start ``tracker`` at startup, drain it after the app's shutdown.

    The drain follows the app's own shutdown handlers, which may still track events. An app
    that rejects lifespan (raises before receiving ``lifespan.startup``, or returns without
    answering it) gets the handshake completed for it.

    Example:
        >>> async def django_like(scope, receive, send):
        ...     raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")
        >>> async def serve():
        ...     inbox = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
        ...     sent = []
        ...     async def receive():
        ...         return inbox.pop()
        ...     async def send(message):
        ...         sent.append(message["type"])
        ...     tracker = Tracker("dub", transport=MemoryTransport())
        ...     await run_lifespan(django_like, tracker, {"type": "lifespan"}, receive, send)
        ...     return sent
        >>> import asyncio
        >>> asyncio.run(serve())
        ['lifespan.startup.complete', 'lifespan.shutdown.complete']
    """
    seen = _Seen()

    async def drain() -> None:
        await _drain(tracker)
        if on_shutdown is not None:
            try:
                await on_shutdown()
            except Exception:
                logger.exception("a shutdown hook of the middleware failed")

    async def receive_and_start() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            seen.startup = True
            await _start(tracker)
        elif message["type"] == "lifespan.shutdown":
            seen.shutdown = True
        return message

    async def drain_then_send(message: Message) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            seen.startup_answered = True
            if kind == "lifespan.startup.failed":
                await drain()  # the server stops: deliver what the startup tracked
        elif kind.startswith("lifespan.shutdown."):
            seen.shutdown_answered = True
            await drain()
        await send(message)

    try:
        await app(scope, receive_and_start, drain_then_send)
    except Exception:
        if seen.startup_answered:
            raise  # the app speaks lifespan and failed: the server decides what follows
        if seen.startup:
            logger.exception("the app's lifespan startup failed")
    if seen.shutdown_answered:
        return
    if not seen.startup_answered:
        logger.info(
            "the app does not handle lifespan: AttributionMiddleware starts and drains the "
            "tracker itself"
        )
    await _finish(tracker, drain, seen, receive, send)


async def _finish(
    tracker: Tracker,
    drain: Callable[[], Awaitable[None]],
    seen: _Seen,
    receive: Receive,
    send: Send,
) -> None:
    """Complete the handshake the app left unfinished, then drain at shutdown."""
    if not seen.startup_answered:
        if not seen.startup:
            while (await receive())["type"] != "lifespan.startup":
                pass
            await _start(tracker)
        await send({"type": "lifespan.startup.complete"})
    if not seen.shutdown:
        while (await receive())["type"] != "lifespan.shutdown":
            pass
    await drain()
    await send({"type": "lifespan.shutdown.complete"})


async def _start(tracker: Tracker) -> None:
    try:
        await tracker.start()
    except Exception:  # the app's own startup must still run
        logger.exception("the tracker did not start; events are sent inline until it does")


async def _drain(tracker: Tracker) -> None:
    try:
        await tracker.aclose()
    except Exception:
        logger.exception("the tracker did not close cleanly")
