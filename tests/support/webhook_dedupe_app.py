"""A webhook endpoint for the dedupe attack tests, served by uvicorn in its own process.

Environment: ``WEBHOOK_DEDUPE`` (a SQLite path or a redis:// URL), ``WEBHOOK_LEASE`` (seconds a
claim holds), ``WEBHOOK_LOG`` (each handler run appends ``<pid> <event id> <start|done|fail>``),
``WEBHOOK_SLEEP`` (seconds a handler takes) and ``WEBHOOK_FAIL_ONCE`` (a file: the first run
that finds it missing creates it and raises).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from asgi_attribution.webhooks import (
    DedupeStore,
    RedisDedupe,
    SQLiteDedupe,
    WebhookEvent,
    WebhookVerifier,
    webhook_endpoint,
)

SECRET = "whsec_attack"

spec = os.environ["WEBHOOK_DEDUPE"]
lease = float(os.environ.get("WEBHOOK_LEASE", "600"))
store: DedupeStore = (
    RedisDedupe(spec, lease=lease)
    if spec.startswith("redis://")
    else SQLiteDedupe(spec, lease=lease)
)
log = Path(os.environ["WEBHOOK_LOG"])
pause = float(os.environ.get("WEBHOOK_SLEEP", "0.2"))
fail_once = os.environ.get("WEBHOOK_FAIL_ONCE")


def note(event: WebhookEvent, what: str) -> None:
    with log.open("a") as file:  # one short line per write: O_APPEND keeps lines whole
        file.write(f"{os.getpid()} {event.id} {what}\n")


def on_lead(event: WebhookEvent) -> None:
    note(event, "start")
    time.sleep(pause)
    if fail_once is not None:
        try:
            with open(fail_once, "x"):
                pass
        except FileExistsError:
            pass
        else:
            note(event, "fail")
            raise RuntimeError("the first run fails")
    note(event, "done")


app = webhook_endpoint(WebhookVerifier(secrets=SECRET), {"lead.created": on_lead}, dedupe=store)
