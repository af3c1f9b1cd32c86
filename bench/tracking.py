"""Tracking a lead: handler-visible latency, and delivery throughput of many leads.

All against the package's fake Dub API (faults off) running in its own process on loopback,
so the client under test never shares a GIL with the server. Compared: our ``track_lead`` with
background delivery (the default), with inline delivery (``background=False``), and the
official ``dub`` SDK's ``track.lead_async``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from typing import Any

from .common import cpu_ns, fake_provider, median, percentile, rss_bytes

CLICK_ID = "cm3kf8x2a0001bench9yz7q"
_ids = itertools.count()


def _customer() -> str:
    return f"user_{next(_ids)}"  # unique: the provider deduplicates per (customer, event name)


def _reset(base_url: str) -> None:
    """Forget what the fake recorded, so its memory stays flat across runs."""
    req = urllib.request.Request(f"{base_url}/_fake/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=10).close()


def _tracker(base_url: str, *, background: bool, **options: Any) -> Any:
    from asgi_attribution import Tracker

    return Tracker("dub", api_key="k", base_url=base_url, background=background, **options)


def _sdk(base_url: str) -> Any:
    import dub

    return dub.Dub(token="k", server_url=base_url)


async def _ours_call(tracker: Any) -> Any:
    return await tracker.track_lead(
        click_id=CLICK_ID, event_name="Sign up", customer_external_id=_customer()
    )


async def _sdk_call(sdk: Any) -> Any:
    from dub.models.errors import ResponseValidationError

    try:
        return await sdk.track.lead_async(
            request={
                "click_id": CLICK_ID,
                "event_name": "Sign up",
                "customer_external_id": _customer(),
            }
        )
    except ResponseValidationError:  # newer SDKs want link fields the fake leaves out
        return None  # the request was made and answered: its cost is what is measured


async def _latency(base_url: str, rounds: int, calls: int) -> dict[str, Any]:
    background = _tracker(base_url, background=True)
    inline = _tracker(base_url, background=False)
    sdk = _sdk(base_url)
    await background.start()
    await inline.start()
    first = await _ours_call(background)
    if first.status != "queued":
        raise RuntimeError(f"background track_lead returned {first.status!r}, not 'queued'")
    if (await _ours_call(inline)).status != "sent":
        raise RuntimeError("inline track_lead did not answer 'sent'")
    await _sdk_call(sdk)  # warm: connection opened, models built
    await background.flush()

    variants = {
        "ours, background (default)": lambda: _ours_call(background),
        "ours, inline (background=False)": lambda: _ours_call(inline),
        "dub SDK track.lead_async": lambda: _sdk_call(sdk),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants)
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            call = variants[name]
            for _ in range(calls):
                start = time.perf_counter_ns()
                await call()
                samples[name].append((time.perf_counter_ns() - start) / 1000)
                # A handler's request ends here; give the loop a turn as a server would.
                await asyncio.sleep(0)
            await background.flush()  # the next variant starts with an empty queue
    await background.aclose()
    await inline.aclose()
    stats = background.stats.as_dict()
    out: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "variants": {}}
    for name, values in samples.items():
        out["variants"][name] = {
            "median_us": round(median(values), 1),
            "p90_us": round(percentile(values, 90), 1),
            "p99_us": round(percentile(values, 99), 1),
        }
    out["background_stats"] = stats
    return out


async def _throughput_ours(base_url: str, n: int, fake_pid: int) -> dict[str, Any]:
    tracker = _tracker(base_url, background=True)
    await tracker.start()
    rss0 = rss_bytes()
    cpu0, fake0 = time.process_time(), cpu_ns(fake_pid)
    start = time.perf_counter()
    for _ in range(n):
        await _ours_call(tracker)
    enqueued = time.perf_counter() - start
    await tracker.flush()
    elapsed = time.perf_counter() - start
    cpu, fake = time.process_time() - cpu0, cpu_ns(fake_pid) - fake0
    stats = tracker.stats.as_dict()
    await tracker.aclose()
    if stats["sent"] != n:
        raise RuntimeError(f"ours: {stats['sent']} of {n} delivered: {stats}")
    return {
        "events_per_s": round(n / elapsed),
        "seconds": round(elapsed, 2),
        "handler_side_seconds": round(enqueued, 2),
        "workers": getattr(tracker.transport, "workers", None),
        "client_cpu_us_per_event": round(cpu / n * 1e6),
        "provider_cpu_us_per_event": round(fake / n / 1000),
        "rss_growth_mib": round((rss_bytes() - rss0) / 2**20, 1),
    }


async def _throughput_sdk(base_url: str, n: int, batch: int, fake_pid: int) -> dict[str, Any]:
    sdk = _sdk(base_url)
    await _sdk_call(sdk)
    cpu0, fake0 = time.process_time(), cpu_ns(fake_pid)
    start = time.perf_counter()
    done = 0
    if batch == 1:
        for _ in range(n):
            await _sdk_call(sdk)
            done += 1
    else:
        for i in range(0, n, batch):
            results = await asyncio.gather(*(_sdk_call(sdk) for _ in range(min(batch, n - i))))
            done += len(results)
    elapsed = time.perf_counter() - start
    cpu, fake = time.process_time() - cpu0, cpu_ns(fake_pid) - fake0
    return {
        "events_per_s": round(done / elapsed),
        "seconds": round(elapsed, 2),
        "leads": done,
        "client_cpu_us_per_event": round(cpu / done * 1e6),
        "provider_cpu_us_per_event": round(fake / done / 1000),
    }


def run(
    *, rounds: int = 5, calls: int = 200, leads: int = 5_000, sdk_leads: int = 1_500
) -> dict[str, Any]:
    """``leads`` for ours; the SDK's steady rate is measured over ``sdk_leads`` (its sequential
    run over 10,000 alone would take most of the 5-minute budget)."""
    with fake_provider() as (base_url, pid):
        latency = asyncio.run(_latency(base_url, rounds, calls))
        _reset(base_url)
        throughput: dict[str, Any] = {}
        ours = asyncio.run(_throughput_ours(base_url, leads, pid))
        throughput["ours, background"] = {"leads": leads, **ours}
        _reset(base_url)
        for batch, label in ((1, "sequential"), (10, "gather x10"), (100, "gather x100")):
            throughput[f"dub SDK, {label}"] = asyncio.run(
                _throughput_sdk(base_url, sdk_leads, batch, pid)
            )
            _reset(base_url)
    return {"latency": latency, "throughput": throughput}


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    kwargs = {"rounds": 2, "calls": 50, "leads": 2000, "sdk_leads": 500} if quick else {}
    print(json.dumps(run(**kwargs), indent=1))
