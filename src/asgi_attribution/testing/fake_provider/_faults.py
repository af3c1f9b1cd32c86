"""The failures the fake injects: 503s, 429s with ``Retry-After``, slow answers, dropped
connections; and how a request draws its fault.

Example:
    >>> plan = FaultPlan(Faults(fail_first=1))
    >>> plan.draw(), plan.draw()
    ('error', None)
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import TypeAdapter
from starlette.types import Send

from ._wire import error_body, send_json

__all__ = [
    "FAULT_STATUS",
    "ConnectionDropped",
    "FaultKind",
    "FaultPlan",
    "Faulted",
    "Faults",
    "RetryAfterForm",
    "drop_connection",
    "parse_faults",
    "retry_after_value",
    "send_rate_limited",
]


RetryAfterForm = Literal["seconds", "http-date", "unix-ms"]

FaultKind = Literal["error", "rate_limit", "drop", "slow"]

_logger = logging.getLogger(__name__)

#: The status each fault answers with (``None``: the connection is cut, nothing is answered;
#: a slow answer is the route's own status, given when it is sent).
FAULT_STATUS: dict[FaultKind, int | None] = {"error": 503, "rate_limit": 429, "drop": None}


@dataclass(frozen=True)
class Faulted:
    """One tracking request that met an injected fault, as ``GET /_fake/events`` lists it.

    Example:
        >>> Faulted("POST", "/track/lead", "evt_1", "error", 503).status
        503
    """

    method: str
    path: str
    idempotency_key: str | None
    fault: FaultKind
    status: int | None


_RATE_FIELDS = ("error_rate", "rate_limit_rate", "drop_rate", "slow_rate")


@dataclass(frozen=True)
class Faults:
    """Which failures the fake injects; the defaults inject none.

    Each tracking request gets at most one fault. ``fail_first`` is applied first and is
    deterministic; after it, one random draw per request picks error, rate limit, drop, slow or
    nothing, with the given probabilities (so their sum must not exceed 1).

    - ``error_rate``: answer 503 with Dub's error body; nothing is recorded.
    - ``rate_limit_rate``: answer 429 with a ``Retry-After`` header in the form ``retry_after``
      (``"unix-ms"`` is what Dub sends; ``None`` omits the header), pointing
      ``retry_after_seconds`` ahead.
    - ``slow_rate``: record the event, then wait ``slow_seconds`` before answering, so a client
      timeout leaves it unsure whether the event was delivered (it was).
    - ``drop_rate``: cut the connection mid-response; the client sees a transport error and
      nothing is recorded.
    - ``fail_first``: answer 503 to the first N tracking requests.
    - ``seed``: seed for the random draws, so a run can be replayed.

    Example:
        >>> Faults(rate_limit_rate=0.5, retry_after="seconds", seed=7).retry_after
        'seconds'
    """

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: RetryAfterForm | None = "unix-ms"
    retry_after_seconds: float = 1.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    drop_rate: float = 0.0
    fail_first: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1, got {value!r}")
        total = sum(getattr(self, name) for name in _RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"{', '.join(_RATE_FIELDS)}: must add up to at most 1, got {total}")
        if self.retry_after is not None and self.retry_after not in get_args(RetryAfterForm):
            raise ValueError(f"retry_after: must be one of {get_args(RetryAfterForm)} or None")
        for name in ("retry_after_seconds", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if self.fail_first < 0:
            raise ValueError("fail_first: must be >= 0")


def parse_faults(data: dict[str, Any]) -> Faults:
    """:class:`Faults` from JSON (``PUT /_fake/faults``); an unknown field is a ``ValueError``.

    Raises pydantic's ``ValidationError`` for a field of the wrong type.

    Example:
        >>> parse_faults({"error_rate": 0.5, "seed": 3}).error_rate
        0.5
        >>> parse_faults({"eror_rate": 0.5})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: eror_rate: not a Faults field (known: drop_rate, error_rate, ...)
    """
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a Faults field (known: {', '.join(sorted(known))})")
    faults: Faults = TypeAdapter(Faults).validate_python(data)
    return faults


class FaultPlan:
    """The draws of one :class:`Faults` setting: ``fail_first`` first, then seeded draws.

    Not locked: the fake calls :meth:`draw` under its own lock.

    Example:
        >>> plan = FaultPlan(Faults(error_rate=1.0))
        >>> plan.draw()
        'error'
    """

    __slots__ = ("_requests", "_rng", "faults")

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._requests = 0

    def draw(self) -> FaultKind | None:
        """This tracking request's fault, or ``None``.

        Example:
            >>> FaultPlan(Faults()).draw() is None
            True
        """
        faults = self.faults
        self._requests += 1
        if self._requests <= faults.fail_first:
            return "error"
        # One draw per request: at most one fault, and a seed replays the same sequence.
        draw = self._rng.random()
        bound = 0.0
        choices: tuple[tuple[FaultKind, float], ...] = (
            ("error", faults.error_rate),
            ("rate_limit", faults.rate_limit_rate),
            ("drop", faults.drop_rate),
            ("slow", faults.slow_rate),
        )
        for fault, rate in choices:
            bound += rate
            if draw < bound:
                return fault
        return None


def retry_after_value(form: RetryAfterForm, delay: float, now: float | None = None) -> str:
    """A ``Retry-After`` value ``delay`` seconds ahead, in ``form``.

    ``"seconds"`` is delta-seconds (an integer), ``"http-date"`` an IMF-fixdate, ``"unix-ms"``
    the Unix timestamp in milliseconds that Dub sends.

    Example:
        >>> retry_after_value("seconds", 1.5), retry_after_value("unix-ms", 2, now=1000.0)
        ('2', '1002000')
        >>> retry_after_value("http-date", 0, now=0)
        'Thu, 01 Jan 1970 00:00:00 GMT'
    """
    at = (time.time() if now is None else now) + delay
    if form == "seconds":
        return str(math.ceil(delay))
    if form == "http-date":
        return email.utils.formatdate(math.ceil(at), usegmt=True)
    return str(int(at * 1000))


async def send_rate_limited(send: Send, faults: Faults) -> None:
    """Answer 429 with the ``Retry-After`` header that ``faults`` asks for (or none).

    Example:
        >>> import asyncio
        >>> sent = []
        >>> async def send(message): sent.append(message)
        >>> asyncio.run(send_rate_limited(send, Faults(retry_after="seconds")))
        >>> sent[0]["status"], sent[0]["headers"][-1]
        (429, (b'retry-after', b'1'))
    """
    headers: list[tuple[str, str]] = []
    if faults.retry_after is not None:
        headers.append(
            ("retry-after", retry_after_value(faults.retry_after, faults.retry_after_seconds))
        )
    payload = error_body("rate_limit_exceeded", "Too many requests (injected fault).")
    await send_json(send, 429, payload, headers)


class ConnectionDropped(Exception):
    """Raised by `FakeProvider` to cut a connection for the ``drop_rate`` fault.

    Under a server such as uvicorn this turns into a closed socket (uvicorn's traceback for it is
    filtered out). Called in-process through ``httpx.ASGITransport`` it reaches the caller as is.

    Example:
        >>> isinstance(ConnectionDropped("drop_rate fault"), Exception)
        True
    """


class _DropLogFilter(logging.Filter):
    """Hides uvicorn's "Exception in ASGI application" record for deliberate drops only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def _quiet_server_logs() -> None:
    # Installed at the first drop, not at import or construction, so uvicorn's own logging set-up
    # has already run; the filter matches our exception type only, so real errors still show.
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropLogFilter) for f in logger.filters):
        logger.addFilter(_DropLogFilter())


async def drop_connection(send: Send) -> None:
    """Promise a body, send a piece of it, then fail: the server closes the socket mid-body.

    The status is a 503: nothing was recorded (a real provider answers 2xx only once it has
    recorded the event, and a cut 2xx counts as delivered).

    An ASGI app cannot close a socket itself. A server closes it when the app raises after the
    response started (before that, it would answer 500 instead), so the client's read of the
    declared Content-Length fails with a transport error (httpx.RemoteProtocolError).

    Example:
        >>> import asyncio
        >>> async def send(message): pass
        >>> asyncio.run(drop_connection(send))
        Traceback (most recent call last):
        ...
        asgi_attribution.testing.fake_provider._faults.ConnectionDropped: connection dropped (injected drop_rate fault)
    """  # noqa: E501
    _quiet_server_logs()
    _logger.debug("dropping connection (injected fault)")
    start = {
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": b'{"', "more_body": True})
    raise ConnectionDropped("connection dropped (injected drop_rate fault)")
