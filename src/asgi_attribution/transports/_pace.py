"""The provider's rate budget, as its answers state it: one :class:`Pace` per API key and base URL.

Dub and PIMMS limit each API key per window (an Upstash sliding window: 600 requests a minute
on Pro) and say so on every answer, a 2xx too: ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (a Unix time in milliseconds). The budget
is the key's: every process and every other call made with the key spends it. So each answer
updates the pace of its (key, base URL), shared by every transport and worker of this process
(:func:`pace_for`; the registry holds a hash of the key, never the key), and each request first
awaits :meth:`Pace.acquire`, which spaces requests so that what remains of the budget, less
the part left to the app's other calls (``share``), lasts until the reset:

- while the budget is ample, a request waits for nothing (a quiet queue is never slowed); a
  backlog leaves evenly, at most at the limit's own rate (the window learnt from the resets);
- with no budget left for us, the next request waits for the reset (once the window's length
  is known, half the limit's rate instead: a sliding window frees a slot every window /
  limit); a 429 holds every request of the key until its reset;
- while nothing is known of the budget (a backlog's first requests), one request goes first
  and the others wait for its answer (30 s at most): a burst at ``concurrency`` would overrun
  the window before any answer told it; an answer without the headers leaves the pace
  unknown, and from then on nothing waits;
- nothing is reserved while a request waits: each turn is reckoned afresh from the latest
  answer, so requests that waited together never leave on a budget spent meanwhile (the
  ``share`` is the share of each window's budget, as the provider counts it);
- every wait is bounded: a reset in the past or more than two windows (or an hour) ahead is
  clamped, and logged once per pace (clock skew, a proxy that caches headers).

Other processes on the key are seen only through ``Remaining``: each reads what the provider
says is left, so together they stay within the budget.

Example:
    >>> import asyncio, time
    >>> pace = Pace("example")
    >>> reset = str(int((time.time() + 60) * 1000))
    >>> pace.settle({"x-ratelimit-limit": "600", "x-ratelimit-remaining": "599",
    ...              "x-ratelimit-reset": reset}, 200)
    >>> asyncio.run(pace.acquire(1.0))  # ample budget: no wait
    0.0
    >>> pace.known().limit
    600
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_WAIT", "Pace", "PaceState", "known_paces", "pace_for", "read_limit"]

logger = logging.getLogger("asgi_attribution")

#: The longest a stated reset is believed (seconds ahead); a window is also believed to
#: last at most this long.
MAX_WAIT = 3600.0

# A reset stated too far ahead is believed this far (a window, once known): Dub's is a minute.
_IMPLAUSIBLE = 60.0

# Added to a wait for the reset: the provider's window turns on its own clock.
_MARGIN = 0.05

# At the limit's rate, requests leave this much slower: a sliding window frees a slot every
# window / limit exactly, and a request a hair early is a 429.
_SLOW = 1.05

# Below this fraction of our share of the budget, requests slow down towards half the rate.
_LOW = 0.1

# A request sent while the budget is ample may take this fraction of it at once.
_BURST = 0.25

# A reset this many seconds in the past is no clock skew: the window turned as the answer
# travelled (the fake's window, or a slow network).
_LATE = 1.0

# A waiting request reads the latest answer at least this often (seconds).
_RECHECK = 0.25

# While the first request of a pace awaits its answer, the others look this often (seconds)
# and wait for it at most this long in all.
_PROBE_POLL = 0.01
_PROBE_WAIT = 30.0


def read_limit(headers: Mapping[str, str]) -> tuple[int, int, float] | None:
    """``(limit, remaining, reset as Unix seconds)`` from an answer's headers, or None.

    Example:
        >>> read_limit({"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
        ...             "x-ratelimit-reset": "1800000000000"})
        (60, 0, 1800000000.0)
        >>> read_limit({"x-ratelimit-limit": "60"}) is None
        True
    """
    try:
        limit = int(headers["x-ratelimit-limit"])
        remaining = int(headers["x-ratelimit-remaining"])
        reset = float(headers["x-ratelimit-reset"])
    except (KeyError, ValueError):
        return None
    if limit < 1 or remaining < 0 or reset != reset:  # NaN
        return None
    # Milliseconds as Dub sends them; a value in seconds is read as such.
    return limit, min(remaining, limit), reset / 1000 if reset >= 1e11 else reset


@dataclass(frozen=True, slots=True)
class PaceState:
    """What the provider last said of the key's budget (for ``outbox status`` and logs).

    ``reset`` is a Unix time in seconds; ``window`` the window's length as learnt from the
    resets (None until two resets were seen).

    Example:
        >>> PaceState(600, 12, 1800000000.0, 60.0).remaining
        12
    """

    limit: int
    remaining: int
    reset: float
    window: float | None


class Pace:
    """The rate budget of one API key at one base URL, shared by the whole process.

    :meth:`acquire` before a request (it returns the seconds waited), :meth:`settle` with the
    answer's headers and status after it (or with None when no answer came). Safe from any
    thread and event loop: it holds no loop state, only a lock and numbers.

    Example:
        >>> import asyncio
        >>> pace = Pace("example")
        >>> asyncio.run(pace.acquire(0.8)), pace.known()  # nothing known: no pacing
        (0.0, None)
        >>> pace.settle(None, None)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._limit: int | None = None
        self._remaining = 0
        self._reset = 0.0  # Unix seconds, as stated (after clamping)
        self._reset_at = 0.0  # the same on the monotonic clock
        self._window: float | None = None  # learnt from two resets
        self._longest = 0.0  # the longest time to a reset seen: the window, until learnt
        self._stated: float | None = None  # the last reset stated, raw
        self._pending = 0  # requests sent and not yet answered
        self._next = 0.0  # the monotonic time of the next free slot
        self._blocked = 0.0  # a 429 holds every request until then (monotonic)
        self._waiting = 0
        self._holding = False
        self._held = 0.0  # seconds waited since holding started
        self._warned = False
        self._probing = False  # a request went with nothing known: the others await its answer
        self._unpaced = False  # an answer came without the headers: this pace waits for nothing
        self._jitter = 0.0  # in [0, 1), drawn per answer: processes on one key fall out of step

    def known(self) -> PaceState | None:
        """What the provider last said, or None when no answer carried the headers."""
        with self._lock:
            if self._limit is None:
                return None
            return PaceState(self._limit, self._remaining, self._reset, self._window)

    def settle(self, headers: Mapping[str, str] | None, status: int | None) -> None:
        """Take in one answer (``headers`` None: no answer came); ends one :meth:`acquire`."""
        stated = read_limit(headers) if headers is not None else None
        with self._lock:
            self._pending = max(0, self._pending - 1)
            if self._limit is None and self._probing:
                self._probing = False  # no answer: the next request asks again
                self._unpaced = status is not None and stated is None
            if stated is None:
                return
            limit, remaining, reset = stated
            now, wall = time.monotonic(), time.time()
            ahead = self._clamped(reset - wall)
            if self._stated is not None and reset > self._stated:
                turned = min(reset - self._stated, MAX_WAIT)
                self._window = turned if self._window is None else min(self._window, turned)
            self._stated = reset
            self._longest = max(self._longest, ahead)
            self._limit, self._remaining = limit, 0 if status == 429 else remaining
            self._reset, self._reset_at = wall + ahead, now + ahead
            self._jitter = random.random()
            if status == 429:  # every request of the key waits for the reset (Retry-After)
                spacing = (self._window or self._longest) / limit * self._jitter
                self._blocked = max(self._blocked, now + ahead + _MARGIN + spacing)

    def _clamped(self, ahead: float) -> float:
        """``ahead`` (seconds to the stated reset) within [0, two windows or an hour]."""
        bound = MAX_WAIT if self._window is None else min(MAX_WAIT, 2 * self._window)
        if 0 <= ahead <= bound:
            return ahead
        if -_LATE <= ahead < 0:  # the window turned while the answer travelled
            return 0.0
        if not self._warned:
            self._warned = True
            where = "in the past" if ahead < 0 else "ahead"
            logger.warning(
                "rate limit of %s: X-RateLimit-Reset is %.0f s %s of this machine's clock "
                "(clock skew? a caching proxy?); such resets are read as %.0f s ahead at most",
                self.name,
                abs(ahead),
                where,
                min(self._window or _IMPLAUSIBLE, bound),
                extra={"rate_limit_reset_skew": ahead},
            )
        return 0.0 if ahead < 0 else min(self._window or _IMPLAUSIBLE, bound)

    def _delay(self, share: float, spent: float) -> float:
        """The seconds until this request's turn; 0 takes the turn (under the lock).

        Nothing is reserved while a request waits: each turn is reckoned afresh from the
        latest answer, so requests that waited together never leave on a budget that answers
        meanwhile used up. ``spent``: the seconds this request already waited (the bound)."""
        now = time.monotonic()
        if spent >= self._bound():  # every wait is bounded: the request goes
            self._pending += 1
            return 0.0
        if self._limit is None:
            if self._probing and not self._unpaced:  # the first answer tells the budget
                return _PROBE_POLL
            self._probing = not self._unpaced  # this one asks; the others wait for it
            self._pending += 1
            return 0.0
        limit, window = self._limit, self._window
        # The limit's own rate (our share of it), over the window (its longest stated part,
        # until two resets taught its length).
        steady = (window or max(self._longest, _MARGIN)) / (share * limit) * _SLOW
        left = self._reset_at - now
        spare = self._remaining - (1 - share) * limit - self._pending
        earliest = now
        if left <= 0:  # the stated window turned: at most the limit's rate, half that when
            # the window was spent (a sliding window still counts the last one's requests)
            interval = steady if spare >= 1 else 2 * steady
        elif spare >= 1:  # ample: a burst leaves at once, the rest evenly until the reset
            interval = min(left / spare, steady)
            earliest = now - interval * spare * _BURST
            low = max(2.0, _LOW * share * limit)
            if spare < low:  # nearly spent: slow down smoothly to half the rate (the key's
                # other processes read the same Remaining and would race for its last slots)
                interval = max(interval, steady * (2 - spare / low))
        elif window is None:  # nothing spare, and when slots free unknown: at the reset
            # (jittered: other processes on the key read the same reset)
            interval, earliest = steady, self._reset_at + _MARGIN + self._jitter * steady
        else:  # a sliding window frees a slot every window / limit: half that rate, jittered
            # so that processes on the key do not race for each freed slot in step
            interval = (2 + self._jitter) * steady
        slot = max(self._next, earliest, self._blocked)
        if slot > now:
            return slot - now
        self._next = slot + interval
        self._pending += 1
        return 0.0

    def _bound(self) -> float:
        """The longest one request waits in all (seconds): each turn is bounded (resets are
        clamped), but a request behind a backlog waits for the turns of those before it."""
        return _PROBE_WAIT if self._limit is None else MAX_WAIT

    async def acquire(self, share: float = 1.0) -> float:
        """Wait for this request's turn (``share``: the fraction of the budget it may use);
        returns the seconds waited. Bounded: see the module's notes."""
        waited = 0.0
        with self._lock:
            delay = self._delay(share, waited)
            if delay > 0:
                self._waiting += 1
        if delay > 0:
            try:
                while delay > 0:
                    with self._lock:
                        if self._limit is not None:  # not while the first answer is awaited
                            self._hold(delay)
                    started = time.monotonic()
                    # Woken at the turn reckoned now, or sooner to read a newer answer.
                    await asyncio.sleep(min(delay, _RECHECK))
                    waited += time.monotonic() - started
                    with self._lock:
                        delay = self._delay(share, waited)
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._held += waited
        with self._lock:
            if self._holding and self._waiting == 0 and waited == 0:
                self._holding = False
                logger.info(
                    "rate limit of %s: no longer holding events back (%.1f s waited in all)",
                    self.name,
                    self._held,
                )
        return waited

    def _hold(self, delay: float) -> None:
        """Log once that pacing started to hold events back (under the lock)."""
        if self._holding:
            return
        self._holding, self._held = True, 0.0
        logger.info(
            "rate limit of %s: holding events back to stay within it (limit %d, remaining %d, "
            "reset in %.1f s; next request in %.2f s)",
            self.name,
            self._limit or 0,
            self._remaining,
            max(0.0, self._reset_at - time.monotonic()),
            delay,
        )


_paces: dict[tuple[str, str], Pace] = {}
_paces_lock = threading.Lock()


def pace_for(key: str, base_url: str) -> Pace:
    """The process's one :class:`Pace` for ``key`` at ``base_url`` (made on first use).

    Keyed by a hash of the key: the key itself is never kept here.

    Example:
        >>> pace_for("dub_xxx", "https://api.dub.co") is pace_for("dub_xxx", "https://api.dub.co")
        True
        >>> "dub_xxx" in pace_for("dub_xxx", "https://api.dub.co").name
        False
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    with _paces_lock:
        pace = _paces.get((digest, base_url))
        if pace is None:
            pace = _paces[(digest, base_url)] = Pace(f"{base_url} (key {digest[:8]})")
        return pace


def known_paces() -> dict[str, PaceState]:
    """What this process knows of each key's budget, by pace name (``outbox status``).

    Example:
        >>> isinstance(known_paces(), dict)
        True
    """
    with _paces_lock:
        paces = list(_paces.values())
    return {pace.name: state for pace in paces if (state := pace.known()) is not None}


def _forget() -> None:
    """In a forked child: its own budget knowledge (the parent's lock may be held)."""
    global _paces_lock
    _paces_lock = threading.Lock()
    _paces.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
