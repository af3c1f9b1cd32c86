"""One clock per store: due times, leases and retry budgets never read the wall clock directly.

A wall clock can be stepped (NTP, a VM resumed, an operator) or run ahead on one machine. An
outbox that scheduled by it would dead-letter every retrying event after a +1 h step, stall
retries for an hour after a -1 h step, and let a worker whose clock runs ahead take over live
leases. So each store keeps its own clock:

- :class:`AnchoredClock`: the wall time read once, then advanced by ``time.monotonic()``
  (which steps never touch). Steps of the wall clock are detected and logged, not followed.
  The SQLite store keeps the anchor in its file, so every process on the machine (one
  monotonic clock) reads the same store time, whatever its own wall clock says.
- The Redis store reads the server's ``TIME`` (see :mod:`.redis`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["AnchoredClock", "WallClock", "boot_id"]

logger = logging.getLogger("asgi_attribution")

#: A wall clock: seconds since the epoch (``time.time`` unless a test injects another).
WallClock = Callable[[], float]

#: A difference between the wall clock and the store's clock larger than this is a step.
STEP_TOLERANCE = 2.0


def boot_id() -> str:
    """An id of this boot of the machine (Linux), or ``""`` where there is none.

    ``time.monotonic()`` restarts at each boot, so an anchor is only valid for the boot that
    wrote it.

    Example:
        >>> isinstance(boot_id(), str)
        True
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


class AnchoredClock:
    """Store time: ``anchor + time.monotonic()``, never stepped by the wall clock.

    ``anchor`` is wall time minus monotonic time at the moment the clock was anchored (by this
    process or, for a shared file, by the first process of this boot). ``wall`` is only read to
    notice a step (logged once per step, at WARNING) and to anchor a new clock.

    Example:
        >>> wall = [1_800_000_000.0]
        >>> clock = AnchoredClock(wall=lambda: wall[0])
        >>> before = clock.now()
        >>> wall[0] += 3600  # the wall clock jumps an hour ahead
        >>> clock.now() - before < 1  # the store's clock does not
        True
        >>> round(clock.skew())  # noticed, not followed
        3600
    """

    def __init__(self, anchor: float | None = None, *, wall: WallClock = time.time) -> None:
        self.wall = wall
        self.anchor = wall() - time.monotonic() if anchor is None else anchor
        self._reported_skew = 0.0

    @classmethod
    def resume(
        cls, anchor: float, high_water: float, *, wall: WallClock = time.time
    ) -> AnchoredClock:
        """A clock that continues a stored one and never reads earlier than ``high_water``.

        Used when the stored anchor belongs to another boot (the monotonic clock restarted):
        the new anchor is the wall time, or the last store time seen if the wall clock is
        behind it, so store time never runs backwards.

        Example:
            >>> clock = AnchoredClock.resume(0.0, high_water=2e9, wall=lambda: 1e9)
            >>> clock.now() >= 2e9
            True
        """
        del anchor  # another boot's anchor means nothing on this one
        start = max(wall(), high_water)
        return cls(start - time.monotonic(), wall=wall)

    def now(self) -> float:
        """The store's time in seconds (comparable to Unix time, immune to wall-clock steps)."""
        return self.anchor + time.monotonic()

    def skew(self) -> float:
        """Wall clock minus store time, in seconds (0 when nothing stepped)."""
        return self.wall() - self.now()

    def check(self, description: str) -> float:
        """Log (once per step) a wall clock that left the store's clock; return the skew."""
        skew = self.skew()
        if abs(skew - self._reported_skew) > STEP_TOLERANCE:
            self._reported_skew = skew
            logger.warning(
                "outbox %s: the wall clock is %+.0fs from the outbox's clock (stepped, or "
                "another clock anchored it); due times and leases keep the outbox's clock",
                description,
                skew,
            )
        return skew
