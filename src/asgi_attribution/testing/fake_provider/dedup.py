"""The fake's clock and its expiring keys, as the providers keep them in Redis.

Dub reserves a lead's (customer, event name) key for a week with ``SET NX EX``, caches a sale's
answer under its invoice id for a week, and caches a click id per visitor for an hour. PIMMS keeps
the lead key forever. :class:`ExpiringKeys` holds such keys against a :class:`SteppedClock` that
tests move forward instead of waiting.

Example:
    >>> clock = SteppedClock(lambda: 1000.0)
    >>> keys = ExpiringKeys(clock)
    >>> keys.reserve(("lead", "u1", "sign-up"), WEEK), keys.reserve(("lead", "u1", "sign-up"), WEEK)
    (True, False)
    >>> clock.advance(WEEK)
    >>> keys.reserve(("lead", "u1", "sign-up"), WEEK)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["HOUR", "WEEK", "ExpiringKeys", "SteppedClock", "lead_event_key"]

#: Seconds in an hour: how long Dub reuses a visitor's click id on one link.
HOUR = 60 * 60
#: Seconds in a week: Dub's lead dedup window and its invoice id window (PIMMS: invoice only).
WEEK = 7 * 24 * HOUR


class SteppedClock:
    """Unix time from ``source`` (``time.time`` by default) plus what :meth:`advance` added.

    Example:
        >>> clock = SteppedClock(lambda: 50.0)
        >>> clock.advance(10)
        >>> clock()
        60.0
    """

    __slots__ = ("_source", "offset")

    def __init__(self, source: Callable[[], float]) -> None:
        self._source = source
        self.offset = 0.0

    def __call__(self) -> float:
        return self._source() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead (never back).

        Example:
            >>> clock = SteppedClock(lambda: 0.0)
            >>> clock.advance(-1)
            Traceback (most recent call last):
            ...
            ValueError: seconds: must be >= 0, got -1
        """
        if seconds < 0:
            raise ValueError(f"seconds: must be >= 0, got {seconds!r}")
        self.offset += seconds


class ExpiringKeys:
    """Keys with values that lapse ``ttl`` seconds after they were set (``ttl=None``: never).

    Not locked: the fake calls it under its own lock.

    Example:
        >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
        >>> keys.put("in_1", {"sale": 1}, ttl=WEEK)
        >>> keys.get("in_1"), keys.get("in_2")
        ({'sale': 1}, None)
    """

    __slots__ = ("_clock", "_entries")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[Hashable, tuple[float | None, Any]] = {}

    def get(self, key: Hashable) -> Any:
        """The live value under ``key``, or ``None``.

        Example:
            >>> ExpiringKeys(SteppedClock(lambda: 0.0)).get("nothing") is None
            True
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires is not None and self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: Hashable, value: Any, ttl: float | None) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds, replacing any value (Redis ``SET EX``).

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.put("k", 1, ttl=None); keys.put("k", 2, ttl=None); keys.get("k")
            2
        """
        expires = None if ttl is None else self._clock() + ttl
        self._entries[key] = (expires, value)

    def reserve(self, key: Hashable, ttl: float | None, value: Any = True) -> bool:
        """Set ``key`` only if it is not live (Redis ``SET NX``); whether this call set it.

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.reserve("k", ttl=None), keys.reserve("k", ttl=None)
            (True, False)
        """
        if self.get(key) is not None:
            return False
        self.put(key, value, ttl)
        return True

    def clear(self) -> None:
        """Forget every key.

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.put("k", 1, ttl=None); keys.clear(); keys.get("k") is None
            True
        """
        self._entries.clear()


def lead_event_key(event_name: str, *, every_space: bool = True) -> str:
    """The event name as a lead dedup key: lower-cased, spaces as ``-``.

    Dub replaces every space; PIMMS' code replaces only the first (``every_space=False``).

    Example:
        >>> lead_event_key("Sign up"), lead_event_key("SIGN UP"), lead_event_key("sign-up")
        ('sign-up', 'sign-up', 'sign-up')
        >>> lead_event_key("Sign up now"), lead_event_key("Sign up now", every_space=False)
        ('sign-up-now', 'sign-up now')
    """
    lowered = event_name.lower()
    return lowered.replace(" ", "-") if every_space else lowered.replace(" ", "-", 1)
