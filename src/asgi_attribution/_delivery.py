"""How a :class:`~asgi_attribution.Tracker`'s options become its delivery: the transport stack.

One place decides which delivery the options ask for (background queue, outbox, inline, or the
user's own transport), refuses an option that delivery would ignore (``TypeError`` naming
both), checks the values, and builds the stack around one :class:`HTTPTransport`. It is the
only module that names the concrete transports: the tracker talks to what it builds through
the :class:`~asgi_attribution.Transport` contract.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from ._options import callable_or_none, number, share
from ._providers import Provider
from .transports import (
    BackgroundTransport,
    DeliveryStats,
    HTTPTransport,
    OutboxTransport,
    RetryPolicy,
    Transport,
)

__all__ = ["DELIVERY_OPTIONS", "Stack", "build_stack"]

# Which options each delivery uses; one given to a delivery that ignores it is a TypeError.
_QUEUE_OPTIONS = ("queue_size", "queue_full_timeout", "on_drop")

_OUTBOX_OPTIONS = (
    "deliver",
    "outbox_fallback",
    "append_timeout",
    "outbox_retention",
    "allow_eviction",
)

# Options of the deliveries that run in the background (queue or outbox), not inline.
_BACKGROUND_OPTIONS = ("on_error", "on_delivered", "pause_interval", "shutdown_timeout")

#: Every option that shapes delivery (``api_key``/``base_url`` only matter over HTTP).
DELIVERY_OPTIONS = (
    "api_key",
    "base_url",
    "outbox",
    "background",
    "timeout",
    "retry",
    "concurrency",
    "rate_limit_share",
    *_BACKGROUND_OPTIONS,
    *_QUEUE_OPTIONS,
    *_OUTBOX_OPTIONS,
)

# (name, minimum, integer) of the numeric options.
_NUMBERS = (
    ("timeout", 0.001, False),
    ("concurrency", 1, True),
    ("queue_size", 1, True),
    ("queue_full_timeout", 0, False),
    ("shutdown_timeout", 0, False),
    ("pause_interval", 0.001, False),
    ("append_timeout", 0.001, False),
    ("outbox_retention", 0, False),
)

# The callbacks and the arguments delivery calls them with (checked at construction).
_CALLBACKS = {
    "on_error": "delivery, exc",
    "on_drop": "delivery, reason",
    "on_delivered": "delivery, result",
}


@dataclass(frozen=True, slots=True)
class Stack:
    """A tracker's delivery: the transport it sends through, and its HTTP layer if it built one.

    ``new_http`` makes another HTTP transport with the same settings (for sends that must not
    share the long-lived client: on another event loop than the owner's). ``memory_queue``: the
    stack holds events in this process's memory (the background queue), so a tracker nobody
    started sends inline rather than queue events on a loop that may end with them.
    """

    transport: Transport
    stats: DeliveryStats
    http: HTTPTransport | None = None
    new_http: Callable[[], HTTPTransport] | None = None
    memory_queue: bool = False


def _refuse(head: str, given: Mapping[str, Any], ignored: tuple[str, ...], why: str) -> None:
    for name in ignored:
        if name in given:
            raise TypeError(f"{head} ignores {name}=: {why}")


def build_stack(
    provider: Provider,
    api_key: SecretStr | None,
    base_url: str,
    transport: Transport | None,
    given: Mapping[str, Any],
) -> Stack:
    """The stack for ``given`` (the delivery options passed, ``None`` ones left out).

    Example:
        >>> stack = build_stack(DUB, None, "https://api.dub.co", None, {"concurrency": 5})
        >>> type(stack.transport).__name__, stack.http.concurrency
        ('BackgroundTransport', 5)
        >>> build_stack(DUB, None, "https://api.dub.co", None, {"deliver": False})
        Traceback (most recent call last):
        ...
        TypeError: Tracker(...) ignores deliver=: it needs outbox=
    """
    if transport is not None:
        # The key is the tracker's (an app factory passes it whatever the transport); the
        # rest would configure a delivery the given transport replaces.
        replaced = tuple(name for name in DELIVERY_OPTIONS if name != "api_key")
        _refuse("Tracker(transport=...)", given, replaced, "configure the transport")
        own = getattr(transport, "stats", None)
        return Stack(transport, own if isinstance(own, DeliveryStats) else DeliveryStats())
    outbox, background = given.get("outbox"), given.get("background")
    ignored: tuple[str, ...]
    if outbox is not None:
        if background is False:
            _refuse("Tracker(outbox=...)", given, ("background",), "events wait in the outbox")
        # The queue options configure the memory fallback's queue: without it, nothing.
        if given.get("outbox_fallback") == "none":
            why = "there is no in-memory queue (a store failure raises outbox_write_failed)"
            _refuse("Tracker(outbox=..., outbox_fallback=None)", given, _QUEUE_OPTIONS, why)
    else:
        _refuse("Tracker(...)", given, _OUTBOX_OPTIONS, "it needs outbox=")
        if background is False:
            ignored = (*_QUEUE_OPTIONS, *_BACKGROUND_OPTIONS)
            _refuse("Tracker(background=False)", given, ignored, "events are sent inline")
    for name, minimum, integer in _NUMBERS:
        if name in given:
            number("Tracker", name, given[name], minimum, integer=integer)
    if "rate_limit_share" in given:
        share("Tracker", "rate_limit_share", given["rate_limit_share"])
    retry = given.get("retry")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"Tracker(retry=...) must be a RetryPolicy, got {retry!r}")
    for name, called_with in _CALLBACKS.items():
        callable_or_none("Tracker", name, given.get(name), called_with)
    fallback = given.get("outbox_fallback", "memory")
    if fallback not in ("memory", "none"):
        raise ValueError(f"Tracker(outbox_fallback=...) must be 'memory' or None, got {fallback!r}")

    stats = DeliveryStats()
    concurrency = given.get("concurrency")
    new_http = functools.partial(
        HTTPTransport,
        api_key,
        base_url=base_url,
        timeout=given.get("timeout", 10.0),
        retry=retry,
        concurrency=concurrency,
        stats=stats,
        rate_limit_share=given.get("rate_limit_share"),
    )
    http = new_http()
    drain = given.get("shutdown_timeout", 20.0)
    stack: Transport = http
    if outbox is not None:
        stack = OutboxTransport(
            outbox,
            http,
            deliver=given.get("deliver", True),
            concurrency=concurrency,
            shutdown_timeout=drain,
            append_timeout=given.get("append_timeout", 2.0),
            fallback="memory" if fallback == "memory" else None,
            pause_interval=given.get("pause_interval", 30.0),
            retention=given.get("outbox_retention"),
            allow_eviction=given.get("allow_eviction"),
            on_error=given.get("on_error"),
            on_delivered=given.get("on_delivered"),
            **{name: given[name] for name in _QUEUE_OPTIONS if name in given},
            stats=stats,
            providers=[provider],
        )
    elif background is not False:
        return Stack(
            BackgroundTransport(
                http,
                queue_size=given.get("queue_size", 10_000),
                concurrency=concurrency,
                queue_full_timeout=given.get("queue_full_timeout", 1.0),
                shutdown_timeout=drain,
                pause_interval=given.get("pause_interval", 30.0),
                on_error=given.get("on_error"),
                on_drop=given.get("on_drop"),
                on_delivered=given.get("on_delivered"),
                stats=stats,
            ),
            stats,
            http,
            new_http,
            memory_queue=True,
        )
    return Stack(stack, stats, http, new_http)
