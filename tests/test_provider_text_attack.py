"""Provider text under attack: an answer that echoes the API key, and a 2xx too large to read.

Real sockets: a small ASGI provider under uvicorn (``serve_in_thread``). Each scenario counts
events sent, delivered, duplicates (requests beyond one per delivered event), reported (by id:
a dead letter listed by the CLI, or an error raised to the caller) and silently lost, and
asserts silently lost == 0; the echo scenario also asserts the key appears nowhere.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import DeliveryError, RetryPolicy, Tracker
from asgi_attribution._cli import main
from asgi_attribution.testing import serve_in_thread
from asgi_attribution.transports._http import MAX_ANSWER_BYTES

from .test_security import exception_texts

CANARY = "dub_ECHOCANARY_4b1d9e07a2c3f865"
QUICK = ["--initial-backoff", "0.01", "--max-backoff", "0.02", "--no-progress"]


class Provider:
    """Answers every request with ``status`` and ``body(authorization)``; counts requests."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.requests: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        self.requests[headers.get(b"idempotency-key", b"").decode()] += 1
        content = self.body(headers.get(b"authorization", b"").decode())
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})


def echo_error(authorization: str) -> bytes:
    message = f"Invalid API key in header Authorization: {authorization}"
    return json.dumps({"error": {"code": "bad_request", "message": message}}).encode()


def track(tracker: Tracker, n: int) -> list[Any]:
    async def run() -> list[Any]:
        results: list[Any] = []
        async with tracker:
            for i in range(n):
                try:
                    results.append(
                        await tracker.track_lead(
                            click_id="clk", event_name="Sign up", customer_external_id=f"u{i}"
                        )
                    )
                except DeliveryError as error:
                    results.append(error)
        return results

    return asyncio.run(run())


@pytest.mark.parametrize("status", [400, 503])
def test_an_echoed_key_reaches_no_error_log_row_or_cli_output(
    status: int, tmp_path: Path, caplog: Any, capsys: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = Provider(status, echo_error)
    path = str(tmp_path / "events.db")
    n = 5
    with serve_in_thread(provider) as url:
        # Inline: the error reaches the caller.
        quick = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
        inline = track(
            Tracker("dub", api_key=CANARY, base_url=url, retry=quick, background=False), n
        )
        # Outbox: stored first, delivered by the CLI, dead letters listed by the CLI.
        stored = track(Tracker("dub", outbox=path, deliver=False), n)
        args = ["--api-key", CANARY, "--base-url", url, "--max-attempts", "2", *QUICK]
        assert main(["outbox", "deliver", "--path", path, *args]) == 1
        assert main(["outbox", "list", "--dead", "--path", path, "--json"]) == 0
        assert main(["outbox", "list", "--dead", "--path", path]) == 0
    out = capsys.readouterr()
    dead = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    errors = [r for r in inline if isinstance(r, DeliveryError)]
    assert len(errors) == n and all(e.status_code == status for e in errors)
    assert all(
        "[redacted]" in e.message for e in errors
    )  # the provider's text is kept, less the key
    assert sorted(d["event_id"] for d in dead) == sorted(r.event_id for r in stored)
    assert all("[redacted]" in d["last_error"] for d in dead)
    texts = [out.out, out.err, caplog.text, Path(path).read_bytes().decode("latin-1")]
    texts += [r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records]
    for error in errors:
        texts += exception_texts(error)
    leaks = [t for t in texts if CANARY in t]
    row = {
        "sent": 2 * n,
        "delivered": 0,
        "dup": 0,
        "reported": len(errors) + len(dead),
        "silently_lost": 2 * n - len(errors) - len(dead),
        "key_leaks": len(leaks),
    }
    print(status, row)
    assert row == {**row, "silently_lost": 0, "key_leaks": 0}


@pytest.mark.parametrize("kind", ["inline", "outbox"])
def test_an_oversized_2xx_is_delivered_once_with_outcome_unknown(
    kind: str, tmp_path: Path, caplog: Any, capsys: Any
) -> None:
    pad = b'{"pad":"' + b"a" * (MAX_ANSWER_BYTES + 10) + b'"}'
    provider = Provider(200, lambda authorization: pad)
    n = 5
    with serve_in_thread(provider) as url:
        if kind == "inline":
            results = track(Tracker("dub", api_key=CANARY, base_url=url, background=False), n)
            ids = [r.event_id for r in results]
            outcomes = [(r.status, r.outcome, r.outcome_reason) for r in results]
        else:
            path = str(tmp_path / "events.db")
            ids = [r.event_id for r in track(Tracker("dub", outbox=path, deliver=False), n)]
            args = ["--api-key", CANARY, "--base-url", url, *QUICK]
            assert main(["outbox", "deliver", "--path", path, *args]) == 0
            assert main(["outbox", "status", "--path", path, "--json"]) == 0
            status = json.loads(capsys.readouterr().out)
            assert (status["delivered"], status["dead"], status["pending"]) == (n, 0, 0)
            outcomes = [("sent", "unknown", "answer_too_large")] * n  # see the log below
    assert outcomes == [("sent", "unknown", "answer_too_large")] * n
    assert sum("answer_too_large" in r.getMessage() for r in caplog.records) == n
    row = {
        "sent": n,
        "delivered": sum(1 for i in ids if provider.requests[i] >= 1),
        "dup": sum(provider.requests[i] - 1 for i in ids if provider.requests[i] > 1),
        "reported": 0,
        "silently_lost": sum(1 for i in ids if provider.requests[i] == 0),
    }
    print(kind, row)
    assert row == {"sent": n, "delivered": n, "dup": 0, "reported": 0, "silently_lost": 0}
