"""The fake's rate limit per API key: a sliding window counted as Upstash counts Dub's.

Dub limits each API key with ``@upstash/ratelimit``'s ``slidingWindow``: a window is a fixed
bucket of ``window`` seconds, and a request is refused when this bucket's requests plus the
previous bucket's, weighted by the part of it still inside the sliding window (rounded
down), reach the limit. A refused request is not counted. Every answer states
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (the end of the
current bucket, a Unix time in milliseconds) and ``Retry-After``, the same value.

Example:
    >>> limiter = SlidingWindow(RateLimit.parse("2/10s"))
    >>> [limiter.take("k", now=100.0)[0] for _ in range(3)]
    [True, True, False]
    >>> limiter.take("k", now=100.0)[1]["x-ratelimit-reset"]
    '110000'
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["RateLimit", "SlidingWindow"]

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` requests per ``window`` seconds and API key; ``skew`` seconds are added to
    the reset the answers state (a provider whose clock is off, a proxy that caches them).

    Example:
        >>> RateLimit.parse("600/60s")
        RateLimit(limit=600, window=60.0, skew=0.0)
        >>> RateLimit.parse("600 per minute")
        Traceback (most recent call last):
        ...
        ValueError: rate_limit: expected REQUESTS/WINDOW such as 600/60s, got '600 per minute'
    """

    limit: int
    window: float
    skew: float = 0.0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"rate_limit: the limit must be at least 1, got {self.limit}")
        if not self.window >= 0.01:
            raise ValueError(f"rate_limit: the window must be >= 0.01 s, got {self.window}")

    @classmethod
    def parse(cls, spec: str) -> RateLimit:
        """Read ``"600/60s"`` (units ``ms``, ``s``, ``m``, ``h``; seconds when none)."""
        match = _SPEC.match(spec)
        if match is None:
            raise ValueError(f"rate_limit: expected REQUESTS/WINDOW such as 600/60s, got {spec!r}")
        count, amount, unit = match.groups()
        return cls(int(count), float(amount) * _UNITS[unit or "s"])


class SlidingWindow:
    """Counts each key's requests in Upstash's sliding window (see the module).

    ``rejected`` counts the 429s; ``peak_used`` is the most of a window's budget ever in use
    (``limit - remaining`` after a request was taken), per key hash.

    Example:
        >>> limiter = SlidingWindow(RateLimit(1, 1.0))
        >>> limiter.take("k", now=5.0)[1]["x-ratelimit-remaining"], limiter.rejected
        ('0', 0)
    """

    def __init__(self, rate: RateLimit) -> None:
        self.rate = rate
        self.rejected = 0
        self.taken = 0
        self.peak_used: dict[str, int] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> tuple[bool, dict[str, str]]:
        """Count one request of ``key``: (allowed, the headers its answer carries)."""
        now = time.time() if now is None else now
        limit, window = self.rate.limit, self.rate.window
        who = hashlib.sha256(key.encode()).hexdigest()[:12]
        bucket = math.floor(now / window)
        into = now / window - bucket  # the part of this bucket gone by
        with self._lock:
            current = self._counts.get((who, bucket), 0)
            previous = math.floor((1 - into) * self._counts.get((who, bucket - 1), 0))
            allowed = previous + current < limit
            if allowed:
                current = self._counts[(who, bucket)] = current + 1
                self.taken += 1
                used = previous + current
                self.peak_used[who] = max(self.peak_used.get(who, 0), used)
            else:
                self.rejected += 1
                used = limit
            for old in [k for k in self._counts if k[1] < bucket - 1]:
                del self._counts[old]
        reset = str(int(((bucket + 1) * window + self.rate.skew) * 1000))
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-reset": reset,
            "retry-after": reset,  # on every answer, as Dub's rateLimitRequest sets it
        }
        return allowed, headers

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._counts.clear()
            self.peak_used.clear()
            self.rejected = self.taken = 0
