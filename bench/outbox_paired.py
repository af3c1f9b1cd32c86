"""The outbox goals of issue 16, each measured paired with its floor (one process, one loop).

On this 2-core VM the CPU speed moves 20-40% from one minute (even one second) to the next, so
a floor measured in one step of the run and ours in another, minutes apart, gave verdicts that
swung from PASS to MISS on the same code. Here every piece runs in short rounds, interleaved in
a shuffled order per round, as ``bench/delivery.py`` does for its rows:

- ours: sequential ``track_lead`` into an append-only SQLite outbox tracker (median per call),
  and a burst of 50 through ``asyncio.gather`` (median per burst: durable when the last returns);
- the floors, as issue 16 defines them: a plain one-row WAL commit with the store's default
  ``synchronous``, a plain 50-row commit, 50 lead validations;
- informational: ``asyncio.gather`` of 50 empty coroutines (what a burst costs the loop alone),
  and the burst's bound (``bench/bounds.py``: validation, one future, one 50-row commit).

Each piece's figure is the least of its rounds' medians (interference only ever adds time, so
the least is the closest to what the code costs; the goals use it) and its median over rounds;
each goal's ratio is also computed round by round, and the median of those ratios is kept.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bounds import burst_bounds
from .common import median
from .floors import commit_batches, open_plain
from .outbox import CLICK_ID, available

LABELS = {
    "sequential": "ours: sequential track_lead (SQLite outbox, append only)",
    "burst50": "ours: burst of 50 track_lead (asyncio.gather), until the last returns",
    "one_row_commit": "floor: plain one-row WAL commit",
    "fifty_row_commit": "floor: plain 50-row WAL commit",
    "validate50": "floor: 50 lead validations",
    "gather50": "asyncio.gather of 50 empty coroutines (informational)",
    "bound50": "bound: 50 signups, each validated, durable by one 50-row commit (bench/bounds.py)",
    "front": "track_lead to a transport that answers at once (informational)",
    "own_append": "the store's own one-row append commit, alone (informational)",
}

#: Per round: sequential events, bursts, one-row commits, 50-row commits, blocks of 50
#: validations, empty gathers. About 0.2 s a round: pieces minutes apart were the problem.
FULL = {"sequential": 300, "burst50": 8, "one_row_commit": 300, "fifty_row_commit": 30}
FULL |= {"validate50": 30, "gather50": 60, "front": 300, "own_append": 300, "bound50": 8}
QUICK = {k: max(3, v // 5) for k, v in FULL.items()}


async def _sequential(tracker: Any, n: int, tag: str) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await tracker.track_lead(
            click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"{tag}_{i}"
        )
        samples.append(time.perf_counter() - t0)
        # Outside the timing, as in bench/outbox.py: the loop's iteration ends, so the next
        # call is a lone signup again (committed at once), not one gathered with it.
        await asyncio.sleep(0)
    if result.status != "queued" or not getattr(result, "durable", False):
        raise RuntimeError(f"track_lead returned {result.status!r}, not durable")
    return samples


async def _bursts(tracker: Any, n: int, tag: str) -> list[float]:
    samples = []
    for b in range(n):
        # The calls are made inside the timing: track_lead validates when called.
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                tracker.track_lead(
                    click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"{tag}_{b}_{i}"
                )
                for i in range(50)
            )
        )
        samples.append(time.perf_counter() - t0)
        await asyncio.sleep(0)
    return samples


def _validations(n: int, tag: str) -> list[float]:
    from asgi_attribution import LeadEvent

    samples = []
    for b in range(n):
        t0 = time.perf_counter()
        for i in range(50):
            LeadEvent(click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"{tag}{b}_{i}")
        samples.append(time.perf_counter() - t0)
    return samples


async def _gathers(n: int) -> list[float]:
    async def nothing() -> None:
        return None

    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await asyncio.gather(*(nothing() for _ in range(50)))
        samples.append(time.perf_counter() - t0)
    return samples


def _answering_tracker() -> Any:
    """A tracker whose transport answers at once: the front path alone (validation included)."""
    from asgi_attribution import Tracker
    from asgi_attribution.transports import TrackResult, Transport

    class Answers(Transport):
        async def send(self, delivery: Any) -> Any:
            return TrackResult("queued", delivery.event)

        async def attempt(self, delivery: Any) -> Any:
            raise NotImplementedError

    return Tracker("dub", transport=Answers())


async def _front(tracker: Any, n: int, tag: str) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await tracker.track_lead(
            click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"{tag}_{i}"
        )
        samples.append(time.perf_counter() - t0)
    return samples


async def _rounds(tmp: Path, sync: str, rounds: int, sizes: dict[str, int]) -> dict[str, Any]:
    from asgi_attribution import Tracker

    tracker = Tracker("dub", api_key="k", outbox=str(tmp / "outbox.sqlite3"), deliver=False)
    front = _answering_tracker()
    await front.start()
    one, one_insert = open_plain(tmp / "one.db", sync)
    fifty, fifty_insert = open_plain(tmp / "fifty.db", sync)
    own, own_insert = open_plain(tmp / "own.db", sync, schema=True)
    own.execute("PRAGMA wal_autocheckpoint = 0")  # as the store's loop connection
    bound, bound_insert = open_plain(tmp / "bound.db", sync)
    await tracker.start()
    pieces: dict[str, Callable[[str], Any]] = {
        "sequential": lambda tag: _sequential(tracker, sizes["sequential"], tag),
        "burst50": lambda tag: _bursts(tracker, sizes["burst50"], tag),
        "one_row_commit": lambda tag: commit_batches(
            one, one_insert, 1, sizes["one_row_commit"], tag
        ),
        "fifty_row_commit": lambda tag: commit_batches(
            fifty, fifty_insert, 50, sizes["fifty_row_commit"], tag
        ),
        "validate50": lambda tag: _validations(sizes["validate50"], tag),
        "gather50": lambda tag: _gathers(sizes["gather50"]),
        "bound50": lambda tag: burst_bounds(bound, bound_insert, sizes["bound50"], tag),
        "front": lambda tag: _front(front, sizes["front"], tag),
        # Autocommit, as the store commits a lone append (the floors use BEGIN/COMMIT).
        "own_append": lambda tag: commit_batches(
            own, own_insert, 1, sizes["own_append"], tag, False
        ),
    }
    per_round: dict[str, list[float]] = {k: [] for k in pieces}
    try:
        for r in range(-1, rounds):  # round -1 warms (schema, caches, connections): not kept
            order = list(pieces)
            random.shuffle(order)
            for name in order:
                samples = pieces[name](f"r{r}")
                if inspect.isawaitable(samples):
                    samples = await samples
                if r >= 0:
                    per_round[name].append(median(samples))
    finally:
        await tracker.aclose()
        await front.aclose()
        one.close()
        fifty.close()
        own.close()
        bound.close()
    return per_round


def _ratio(ours: float, floor: float, rounds_ours: list[float], rounds_floor: list[float]) -> Any:
    per_round = [o / f for o, f in zip(rounds_ours, rounds_floor, strict=True)]
    return {
        "ours_us": round(ours * 1e6, 1),
        "floor_us": round(floor * 1e6, 1),
        "ratio": round(ours / floor, 3),
        "round_ratios_median": round(median(per_round), 3),
        "round_ratios_min": round(min(per_round), 3),
        "round_ratios_max": round(max(per_round), 3),
    }


def run(*, rounds: int = 30, quick: bool = False) -> dict[str, Any]:
    if not available():
        return {"available": False, "note": "not yet available: no outbox transport in the package"}
    from asgi_attribution.transports.outbox import SQLiteOutbox

    sync = str(inspect.signature(SQLiteOutbox).parameters["synchronous"].default).upper()
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        per_round = asyncio.run(_rounds(Path(tmp), sync, rounds, sizes))
    least = {k: min(v) for k, v in per_round.items()}
    pieces = {
        k: {
            "label": LABELS[k],
            "least_us": round(least[k] * 1e6, 1),
            "median_us": round(median(v) * 1e6, 1),
            "rounds_us": [round(x * 1e6, 1) for x in v],
            "per_round": sizes[k],
        }
        for k, v in per_round.items()
    }
    pairs = zip(per_round["validate50"], per_round["fifty_row_commit"], strict=True)
    burst_floor = [v + f for v, f in pairs]
    goals = {
        "sequential": _ratio(
            least["sequential"],
            least["one_row_commit"],
            per_round["sequential"],
            per_round["one_row_commit"],
        ),
        "burst50": _ratio(
            least["burst50"],
            least["validate50"] + least["fifty_row_commit"],
            per_round["burst50"],
            burst_floor,
        ),
    }
    return {
        "available": True,
        "rounds": rounds,
        "sqlite_synchronous": sync,
        "validate_lead_us": round(least["validate50"] / 50 * 1e6, 2),
        "pieces": pieces,
        "goals": goals,
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
