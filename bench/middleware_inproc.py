"""Middleware overhead in-process: direct ASGI calls, no server, no sockets.

Every (variant, case) pair runs ``iterations`` requests per round; the pairs of a round run in a
shuffled order and the rounds repeat, so drift (other processes, CPU frequency) hits every variant
alike. Overhead = the least of a variant's rounds minus the least of the bare app's: on this
shared VM interference only ever adds time, and the median of per-round differences moved by
+-5 us between runs (a pass-through measured below the bare app), while the least of 30 short
rounds repeats within a few tenths of a us. The per-round medians stay in the results beside it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from typing import Any

from starlette.types import Message

from . import apps
from .common import median, spread

_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _BODY


class _Recorder:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))


async def _noop_send(message: Message) -> None:
    return None


async def _check(app: Any, variant: str, case: str, template: dict[str, Any]) -> None:
    """Each variant must answer 200; ours must set the cookie on a landing only."""
    rec = _Recorder()
    await app(dict(template), _receive, rec)
    if rec.status != 200:
        raise RuntimeError(f"{variant} / {case}: status {rec.status}")
    if variant == apps.OURS:
        sets = any(k == b"set-cookie" and v.startswith(b"dub_id=") for k, v in rec.headers)
        if sets != case.startswith("landing"):
            raise RuntimeError(f"{variant} / {case}: Set-Cookie present={sets}")


async def _batch(app: Any, template: dict[str, Any], n: int) -> float:
    receive, send = _receive, _noop_send
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(n):
        await app(template.copy(), receive, send)
    return (time.perf_counter_ns() - start) / n / 1000.0  # microseconds per request


async def _run(rounds: int, iterations: int) -> dict[str, Any]:
    variants = list(apps.VARIANTS)
    cases = list(apps.CASES)
    built = {v: apps.build(v) for v in variants}
    templates = {c: apps.scope_for(c) for c in cases}
    pairs = [(v, c) for v in variants for c in cases]
    for v, c in pairs:
        await _check(built[v], v, c, templates[c])
        await _batch(built[v], templates[c], max(200, iterations // 5))  # warm-up
    samples: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    rng = random.Random(7)
    for _ in range(rounds):
        rng.shuffle(pairs)
        for v, c in pairs:
            samples[(v, c)].append(await _batch(built[v], templates[c], iterations))

    result: dict[str, Any] = {"rounds": rounds, "iterations": iterations, "cases": {}}
    for c in cases:
        bare = samples[(apps.BARE, c)]
        rows = {}
        for v in variants:
            per_round = samples[(v, c)]
            overhead = [x - b for x, b in zip(per_round, bare, strict=True)]
            least = min(per_round) - min(bare)
            rows[v] = {
                "us_per_request": round(min(per_round), 3),
                "overhead_us": round(least, 3),
                "overhead_iqr_us": [round(x, 3) for x in spread(overhead)],
                "overhead_pct_of_bare": round(100 * least / min(bare), 2),
                "median_us_per_request": round(median(per_round), 3),
                "overhead_median_us": round(median(overhead), 3),
            }
        result["cases"][c] = rows
    return result


def run(rounds: int = 30, iterations: int = 250) -> dict[str, Any]:
    return asyncio.run(_run(rounds, iterations))


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
