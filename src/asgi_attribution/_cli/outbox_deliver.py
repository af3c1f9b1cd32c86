"""``asgi-attribution outbox deliver``: deliver what an outbox holds, once or as a worker.

The provider of each event is read from its stored row at delivery time, so the API keys are
checked before the store is touched: ``--api-key`` for every event, else each provider's
environment variable (``DUB_API_KEY``, ``PIMMS_API_KEY``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from ..providers import DUB, PIMMS
from ..transports import OutboxStore, OutboxTransport, RetryPolicy
from .common import EXIT_FAILED, EXIT_OK, UsageError, error_line

__all__ = ["KEY_VARIABLES", "PROG", "Progress", "deliver", "missing_key"]

PROG = "asgi-attribution outbox"

#: The environment variable of each provider's API key, as the HTTP transport reads them.
KEY_VARIABLES: tuple[str, ...] = (DUB.api_key_env, PIMMS.api_key_env)


def missing_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The one-line reason ``deliver`` cannot authenticate, or None when a key is set.

    ``api_key`` (``--api-key``) serves every event; without it, at least one provider's variable
    must be set (events of a provider without its key become dead letters naming the variable,
    to ``outbox retry`` once it is set).

    Example:
        >>> missing_key(None, {"DUB_API_KEY": "dub_xxx"}) is None
        True
        >>> missing_key(None, {"DUB_API_KEY": ""})
        'no API key: set DUB_API_KEY (PIMMS_API_KEY for PIMMS events) or pass --api-key'
    """
    environ = os.environ if environ is None else environ
    if api_key or any(environ.get(name) for name in KEY_VARIABLES):
        return None
    first, *others = KEY_VARIABLES
    also = f" ({', '.join(others)} for PIMMS events)" if others else ""
    return f"no API key: set {first}{also} or pass --api-key"


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = Progress(4, out, enabled=True)
        >>> bar.update(done=2, dead=0, left=2, force=True)
        >>> out.getvalue()
        '\\r[###############...............] 2 delivered, 0 dead, 2 left '
    """

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def update(self, done: int, dead: int, left: int, force: bool = False) -> None:
        """Redraw the bar (at most ten times a second unless ``force``)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        # Progress is what left the store; counting done + left would count twice an event that
        # was delivered but not yet marked so. New appends meanwhile grow the total.
        self.total = max(self.total, left)
        width = 30
        filled = int(width * (self.total - left) / self.total)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {done} delivered, {dead} dead, {left} left ")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _transport(args: argparse.Namespace, store: OutboxStore) -> OutboxTransport:
    try:
        retry = RetryPolicy(
            max_attempts=args.max_attempts,
            max_elapsed=args.max_elapsed,
            initial_backoff=args.initial_backoff,
            max_backoff=args.max_backoff,
        )
        return OutboxTransport(
            store,
            api_key=args.api_key,
            base_url=args.base_url,
            timeout=args.timeout,
            retry=retry,
            concurrency=args.concurrency,
            lease=args.lease,
            poll_interval=0.2 if not args.follow else 1.0,
            shutdown_timeout=0,
            retry_open=False,  # a store that cannot be opened ends the command (exit 2)
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def deliver(args: argparse.Namespace, store: OutboxStore) -> int:
    """Deliver until nothing is left (or, with ``--follow``, until SIGINT/SIGTERM).

    Returns 1 when events became dead letters, or (without ``--follow``) were left undelivered,
    also when delivery paused on a fault of the whole integration (a wrong API key): every
    event would meet it, so the command stops and says so, the events still pending.
    """
    transport = _transport(args, store)
    # Opened here first: a store that cannot be used is one line and exit code 2.
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A worker stops cleanly: in-flight claims are given back, nothing is lost.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    paused: str | None = None
    try:
        await transport.start()
        total = await store.unfinished()
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(total, sys.stderr, enabled=bool(show) and not args.follow)
        deadline = None if args.deadline is None else time.monotonic() + args.deadline
        while not stop.is_set():
            left = await store.unfinished()
            stats = transport.stats
            progress.update(stats.sent, stats.failed, left)
            if left == 0 and not args.follow:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            paused = transport.paused
            if paused is not None and not args.follow:
                break  # every event would meet the same fault: stop, keep them pending
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        progress.update(transport.stats.sent, transport.stats.failed, left, force=True)
        progress.finish()
    finally:
        await transport.aclose()
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    if paused is not None and not args.follow:
        print(
            error_line(
                PROG,
                f"delivery paused: {paused}: every event would fail the same way, so they stay "
                "pending; fix the cause (the API key, --base-url) and run deliver again",
            ),
            file=sys.stderr,
        )
    stats = transport.stats
    left = transport.left_in_store
    summary = f"{stats.sent} delivered, {stats.failed} dead, {stats.retried} retried"
    print(summary + (f", {left} left in the outbox" if left else ""), file=sys.stderr)
    # A stopped --follow worker leaves scheduled retries behind by design; only dead letters fail.
    unfinished = bool(left) and not args.follow
    return EXIT_FAILED if stats.failed or unfinished else EXIT_OK
