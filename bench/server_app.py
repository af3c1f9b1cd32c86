"""The ASGI app served by uvicorn for ``middleware_server``: every variant in one process.

``/<v>.<c>/...`` goes to variant number ``v`` of :data:`bench.apps.VARIANTS` (``c`` names the
case) with the prefix stripped. The dispatcher times each call of a variant's app with
``thread_time_ns`` (CPU time: preemption by other processes is not counted); ``GET /_stats``
returns the samples' medians and totals, then resets them. One server, one warm interpreter,
requests of every variant interleaved by the load generator: drift and other processes affect
every variant alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from starlette.types import Receive, Scope, Send

from . import apps


class Dispatcher:
    def __init__(self) -> None:
        self.apps = [apps.build(v) for v in apps.VARIANTS]
        self.samples: dict[str, list[int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan off: nothing here needs startup
        path: str = scope["path"]
        if path == "/_stats":
            await self._stats(send)
            return
        slash = path.find("/", 1)
        key = path[1:slash]
        app = self.apps[int(key.partition(".")[0])]
        rest = path[slash:]
        scope = {**scope, "path": rest, "raw_path": rest.encode()}
        start = time.thread_time_ns()
        await app(scope, receive, send)
        elapsed = time.thread_time_ns() - start
        samples = self.samples.get(key)
        if samples is None:
            samples = self.samples[key] = []
        samples.append(elapsed)

    async def _stats(self, send: Send) -> None:
        stats = {
            key: {"median_ns": statistics.median(s), "sum_ns": sum(s), "count": len(s)}
            for key, s in self.samples.items()
        }
        self.samples = {}
        body = json.dumps(stats).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        Dispatcher(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
