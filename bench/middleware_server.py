"""Middleware overhead over a real server: uvicorn on 127.0.0.1, load from ``wrk``.

One uvicorn process serves every variant (see ``server_app``). Each round is one ``wrk`` run
whose Lua script rotates through all (variant, case) requests, so they interleave request by
request. The server times each app call (``perf_counter_ns``, median per variant and case) and
its own CPU time per request (``/proc/<pid>/task/*/schedstat``). Then:

- overhead (us) = median app time of the variant - median app time of the bare app, same case;
- the bare request's full server time = CPU time per request over the run, minus the mean app
  time over the run, plus the bare app's median (uvicorn's own work is the same for all);
- overhead (%) = overhead / that full time. Medians over rounds.

Without ``wrk`` (not installable), an asyncio keep-alive client loop sends the same rotation.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from . import apps
from .common import PYTHON, cpu_ns, free_port, median, process, spread

CONNECTIONS = 1  # one request in flight: an app call's time is its own
COOKIE_CASE = "dub_id among 10 cookies"


def _targets() -> dict[str, tuple[str, str, list[tuple[bytes, bytes]]]]:
    """key ("v.c") -> (variant, case, request path with query, extra headers)."""
    variants, cases = list(apps.VARIANTS), list(apps.CASES)
    chosen = [(v, COOKIE_CASE) for v in variants]
    chosen += [(v, c) for v in (apps.BARE, apps.OURS) for c in cases if c != COOKIE_CASE]
    out = {}
    for v, c in chosen:
        key = f"{variants.index(v)}.{cases.index(c)}"
        path, query, extra = apps.CASES[c]
        target = f"/{key}{path}" + (f"?{query.decode()}" if query else "")
        out[key] = (v, c, target, extra)
    return out  # type: ignore[return-value]


def _lua(targets: dict[str, Any]) -> str:
    def lua_str(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["local reqs = {}", "init = function(args)"]
    for _, _, target, extra in targets.values():
        headers = ", ".join(
            f"[{lua_str(k.decode())}] = {lua_str(v.decode())}"
            for k, v in [(b"Host", b"www.example.com"), *extra]
        )
        lines.append(f'  reqs[#reqs + 1] = wrk.format("GET", {lua_str(target)}, {{{headers}}})')
    lines += [
        "end",
        "local i = 0",
        "request = function()",
        "  i = i % #reqs + 1",
        "  return reqs[i]",
        "end",
        "local bad = 0",
        "response = function(status, headers, body)",
        "  if status ~= 200 then bad = bad + 1 end",
        "end",
    ]
    return "\n".join(lines) + "\n"


def _pinned(args: list[str], cpu: int) -> list[str]:
    """Pin a process to one CPU (when ``taskset`` exists and there are 2+ CPUs)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *args]
    return args


def _wrk(port: int, script: str, seconds: int) -> None:
    cmd = _pinned(["wrk"], 0)
    cmd += ["-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", script]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    if out.returncode != 0 or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        raise RuntimeError(f"wrk failed:\n{out.stdout}\n{out.stderr}")


async def _client_loop(port: int, targets: dict[str, Any], seconds: float) -> None:
    """Keep-alive GETs rotating through the targets on ``CONNECTIONS`` connections."""
    heads = []
    for _, _, target, extra in targets.values():
        head = f"GET {target} HTTP/1.1\r\nHost: www.example.com\r\n".encode()
        heads.append(head + b"".join(k + b": " + v + b"\r\n" for k, v in extra) + b"\r\n")
    deadline = time.perf_counter() + seconds

    async def one(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < deadline:
                writer.write(heads[i % len(heads)])
                i += 1
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.decode(errors="replace"))
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))


def _stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as r:
        return dict(json.load(r))


def run(rounds: int = 5, seconds: int = 3) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None
    targets = _targets()
    port = free_port()
    app_us: dict[str, list[float]] = {k: [] for k in targets}
    full_bare_us: dict[str, list[float]] = {}
    overhead_us: dict[str, list[float]] = {k: [] for k in targets}
    overhead_pct: dict[str, list[float]] = {k: [] for k in targets}
    server = [PYTHON, "-m", "bench.server_app", "--port", str(port)]
    with tempfile.TemporaryDirectory() as tmp, process(_pinned(server, 1), port) as pid:
        script = os.path.join(tmp, "rotate.lua")
        with open(script, "w") as f:
            f.write(_lua(targets))
        for r in range(rounds + 1):  # round 0 warms up
            _stats(port)
            cpu = cpu_ns(pid)
            if use_wrk:
                _wrk(port, script, seconds)
            else:
                asyncio.run(_client_loop(port, targets, seconds))
            cpu = cpu_ns(pid) - cpu
            stats = _stats(port)
            if r == 0:
                continue
            count = sum(s["count"] for s in stats.values())
            outside = (cpu - sum(s["sum_ns"] for s in stats.values())) / count
            by_case_bare = {
                targets[k][1]: stats[k]["median_ns"] for k in targets if targets[k][0] == apps.BARE
            }
            for key, (variant, case, _, _) in targets.items():
                bare = by_case_bare[case]
                full = outside + bare
                diff = stats[key]["median_ns"] - bare
                app_us[key].append(stats[key]["median_ns"] / 1000)
                overhead_us[key].append(diff / 1000)
                overhead_pct[key].append(100 * diff / full)
                if variant == apps.BARE:
                    full_bare_us.setdefault(case, []).append(full / 1000)

    result: dict[str, Any] = {
        "load_generator": f"wrk -t1 -c{CONNECTIONS} (Lua rotation)"
        if use_wrk
        else f"asyncio client loop, {CONNECTIONS} connections",
        "rounds": rounds,
        "seconds_per_round": seconds,
        "pinning": "server on CPU 1, load generator on CPU 0" if _pinned([], 0) else "none",
        "cases": {},
    }
    for key, (variant, case, _, _) in targets.items():
        result["cases"].setdefault(case, {})[variant] = {
            "bare_request_server_us": round(median(full_bare_us[case]), 1),
            "app_call_us": round(median(app_us[key]), 2),
            "overhead_us": round(median(overhead_us[key]), 2),
            "overhead_pct": round(median(overhead_pct[key]), 2),
            "overhead_pct_iqr": [round(x, 2) for x in spread(overhead_pct[key])],
        }
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
