"""Verified webhooks over real sockets: the fake provider signs and posts, our endpoint answers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from asgi_attribution import AttributionError
from asgi_attribution.testing import FakeProvider, serve_in_thread, sign_webhook
from asgi_attribution.webhooks import (
    CommissionCreatedData,
    InvalidSignatureError,
    InvalidWebhookError,
    SaleCreatedData,
    WebhookData,
    WebhookEvent,
    WebhookVerifier,
    compute_signature,
    webhook_endpoint,
)

pytestmark = pytest.mark.anyio

SALE = {
    "eventName": "Subscription",
    "customer": {"id": "cus_1", "externalId": "user_42"},
    "link": {"domain": "go.acme.com", "key": "john", "partnerId": "pn_1"},
    "sale": {"amount": 4900, "currency": "usd", "invoiceId": "in_1"},
}


class Calls:
    """What the handlers saw, from the server thread."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []
        self.lock = threading.Lock()

    def add(self, event: WebhookEvent) -> None:
        with self.lock:
            self.events.append(event)


@pytest.fixture
def calls() -> Calls:
    return Calls()


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=10)


async def test_fake_provider_webhook_signed_with_a_rotated_secret_verifies(calls: Calls) -> None:
    async def on_sale(event: WebhookEvent) -> None:
        calls.add(event)

    verifier = WebhookVerifier(secrets=["whsec_new", "whsec_old"])
    endpoint = webhook_endpoint(verifier, {"sale.created": on_sale})
    fake = FakeProvider("dub", webhook_secret="whsec_old")
    with serve_in_thread(endpoint) as url:
        sent = await fake.send_webhook(f"{url}/", "sale.created", SALE)
    assert sent.status == 200
    [event] = calls.events
    assert event.id == sent.payload["id"] and event.id.startswith("evt_")
    assert isinstance(event.data, SaleCreatedData)
    assert event.data.sale is not None and event.data.sale.amount == 4900
    assert event.data.customer is not None and event.data.customer.externalId == "user_42"
    assert event.created_at.tzinfo is not None


async def test_pimms_signs_with_its_own_header(calls: Calls) -> None:
    endpoint = webhook_endpoint(
        WebhookVerifier("pimms", secrets="whsec_p"), {"lead.created": calls.add}
    )
    fake = FakeProvider("pimms", webhook_secret="whsec_p")
    with serve_in_thread(endpoint) as url:
        sent = await fake.send_webhook(url, "lead.created", {"eventName": "Sign up"})
        dub_signed = post(url, *sign_webhook({"event": "lead.created"}, "whsec_p"))
    assert "Pimms-Signature" in sent.headers and sent.status == 200
    assert dub_signed.status_code == 401  # a Dub-Signature header is not PIMMS'
    assert [e.event for e in calls.events] == ["lead.created"]


def test_a_flipped_byte_or_a_missing_signature_is_401(calls: Calls) -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"), {"sale.created": calls.add})
    body, headers = sign_webhook({"event": "sale.created", "data": SALE}, "whsec_x")
    flipped = body.replace(b"4900", b"4901")
    with serve_in_thread(endpoint) as url:
        answers = [
            post(url, flipped, headers),
            post(url, body, {"Content-Type": "application/json"}),
            post(url, body, {**headers, "Dub-Signature": "zz" * 32}),
            post(url, body, {**headers, "Dub-Signature": compute_signature(body, "whsec_y")}),
            post(url, *sign_webhook({"event": "sale.created"}, "whsec_x", "pimms")),
        ]
        good = post(url, body, headers)
    assert [a.status_code for a in answers] == [401] * 5
    assert good.status_code == 200
    assert len(calls.events) == 1


def test_a_redelivered_id_runs_its_handler_once(calls: Calls) -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"), {"sale.created": calls.add})
    body, headers = sign_webhook({"id": "evt_same", "event": "sale.created"}, "whsec_x")
    with serve_in_thread(endpoint) as url:
        first, second = post(url, body, headers), post(url, body, headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["handled"] is True and second.json()["duplicate"] is True
    assert [e.id for e in calls.events] == ["evt_same"]


def test_a_failing_handler_gives_500_and_its_retry_runs_again(calls: Calls) -> None:
    failures = [RuntimeError("database down")]

    def on_commission(event: WebhookEvent) -> None:  # sync: runs in a worker thread
        calls.add(event)
        if failures:
            raise failures.pop()

    endpoint = webhook_endpoint(
        WebhookVerifier(secrets="whsec_x"), {"commission.created": on_commission}
    )
    payload = {"id": "evt_c", "event": "commission.created", "data": {"earnings": 490}}
    body, headers = sign_webhook(payload, "whsec_x")
    with serve_in_thread(endpoint) as url:
        statuses = [post(url, body, headers).status_code for _ in range(3)]
    assert statuses == [500, 200, 200]
    assert len(calls.events) == 2  # the failure, then the retry; the third was a duplicate
    assert isinstance(calls.events[0].data, CommissionCreatedData)
    assert calls.events[0].data.earnings == 490


def test_events_without_a_handler_are_acknowledged(calls: Calls) -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"), {"sale.created": calls.add})
    body, headers = sign_webhook({"event": "partner.enrolled", "data": {"id": "pn_1"}}, "whsec_x")
    with serve_in_thread(endpoint) as url:
        answer = post(url, body, headers)
    assert answer.status_code == 200 and answer.json()["handled"] is False
    assert calls.events == []


def test_bodies_over_the_limit_get_413_without_being_read(calls: Calls) -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"), max_body=1000)
    body, headers = sign_webhook({"event": "x", "data": {"pad": "a" * 2000}}, "whsec_x")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    with serve_in_thread(endpoint) as url:
        declared = post(url, body, headers)
        streamed = httpx.post(url, content=chunks(), headers=headers, timeout=10)
        small = post(url, *sign_webhook({"event": "x"}, "whsec_x"))
    assert declared.status_code == streamed.status_code == 413
    assert small.status_code == 200


def test_default_limit_is_one_mebibyte() -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"))
    body, headers = sign_webhook({"event": "x", "data": {"pad": "a" * (1024 * 1024)}}, "whsec_x")
    with serve_in_thread(endpoint) as url:
        assert post(url, body, headers).status_code == 413
        assert httpx.get(url).status_code == 405


def test_a_signed_body_that_is_no_webhook_is_400() -> None:
    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"))
    with serve_in_thread(endpoint) as url:
        not_json = post(url, *sign_webhook(b"not json", "whsec_x"))
        no_event = post(url, *sign_webhook(b'{"id": "evt_1", "data": {}}', "whsec_x"))
    assert (not_json.status_code, no_event.status_code) == (400, 400)
    assert "event" in no_event.json()["error"]


def test_the_same_id_while_it_is_being_handled_is_409() -> None:
    started, release = threading.Event(), threading.Event()

    def slow(event: WebhookEvent) -> None:
        started.set()
        release.wait(10)

    endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"), {"x": slow})
    body, headers = sign_webhook({"id": "evt_slow", "event": "x"}, "whsec_x")
    with serve_in_thread(endpoint) as url:
        results: list[int] = []
        first = threading.Thread(
            target=lambda: results.append(post(url, body, headers).status_code)
        )
        first.start()
        assert started.wait(10)
        concurrent = post(url, body, headers).status_code
        release.set()
        first.join(10)
    assert (concurrent, results) == (409, [200])


def test_sqlite_dedupe_is_shared_by_two_endpoints(tmp_path: Path, calls: Calls) -> None:
    path = tmp_path / "webhooks.db"
    verifier = WebhookVerifier(secrets="whsec_x")
    body, headers = sign_webhook({"id": "evt_db", "event": "sale.created"}, "whsec_x")
    one = webhook_endpoint(verifier, {"sale.created": calls.add}, dedupe=path)
    two = webhook_endpoint(verifier, {"sale.created": calls.add}, dedupe=str(path))
    with serve_in_thread(one) as url_one, serve_in_thread(two) as url_two:
        first = post(url_one, body, headers)
        second = post(url_two, body, headers)
    assert first.json()["handled"] is True and second.json()["duplicate"] is True
    assert len(calls.events) == 1


def test_sqlite_dedupe_names_a_bad_path(tmp_path: Path) -> None:
    endpoint = webhook_endpoint(
        WebhookVerifier(secrets="whsec_x"), dedupe=tmp_path / "missing" / "dir" / "x.db"
    )
    with serve_in_thread(endpoint) as url:
        answer = post(url, *sign_webhook({"event": "x"}, "whsec_x"))
    assert answer.status_code == 500  # not acknowledged: the provider retries later


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("redis-server did not start")
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_redis_dedupe_is_shared_and_expires(redis_url: str, calls: Calls) -> None:
    import redis

    verifier = WebhookVerifier(secrets="whsec_x")
    body, headers = sign_webhook({"id": "evt_r", "event": "sale.created"}, "whsec_x")
    one = webhook_endpoint(verifier, {"sale.created": calls.add}, dedupe=redis_url)
    two = webhook_endpoint(verifier, {"sale.created": calls.add}, dedupe=redis_url)
    with serve_in_thread(one) as url_one, serve_in_thread(two) as url_two:
        first = post(url_one, body, headers)
        second = post(url_two, body, headers)
    assert first.json()["handled"] is True and second.json()["duplicate"] is True
    client = redis.Redis.from_url(redis_url)
    ttl = client.ttl("asgi_attribution:webhooks:evt_r")
    client.close()
    assert 29 * 86400 < ttl <= 30 * 86400


def test_verify_in_a_starlette_route_and_mounted_endpoint(calls: Calls) -> None:
    verifier = WebhookVerifier(secrets=["whsec_x"])

    async def by_hand(request: Request) -> JSONResponse:
        try:
            event = await verifier.verify(request)
        except InvalidSignatureError:
            return JSONResponse({"ok": False}, status_code=401)
        return JSONResponse({"event": event.event, "type": type(event.data).__name__})

    app = Starlette(
        routes=[
            Route("/by-hand", by_hand, methods=["POST"]),
            # A Route takes an ASGI app as its endpoint: an exact path, no trailing-slash redirect.
            Route("/webhooks/dub", webhook_endpoint(verifier, {"lead.created": calls.add})),
            Mount("/hooks", webhook_endpoint(verifier, {"lead.created": calls.add})),
        ]
    )
    body, headers = sign_webhook(
        {"event": "lead.created", "data": {"eventName": "Sign up"}}, "whsec_x"
    )
    with serve_in_thread(app) as url:
        by_hand_answer = post(f"{url}/by-hand", body, headers)
        refused = post(f"{url}/by-hand", body + b" ", headers)
        routed = post(f"{url}/webhooks/dub", body, headers)
        mounted = post(f"{url}/hooks/", body, headers)
    assert by_hand_answer.json() == {"event": "lead.created", "type": "LeadCreatedData"}
    assert refused.status_code == 401
    assert routed.json()["handled"] is True and mounted.json()["handled"] is True
    assert calls.events[0].data.model_dump()["eventName"] == "Sign up"


def test_verify_body_details() -> None:
    verifier = WebhookVerifier(secrets="whsec_x")
    body, headers = sign_webhook(
        {
            "id": "evt_1",
            "event": "link.archived",  # a trigger Dub may add one day: parsed, untyped
            "createdAt": "2025-01-14T04:49:30.459Z",
            "data": {"click": {"id": "c1"}},
        },
        "whsec_x",
    )
    lowered = {k.lower(): v for k, v in headers.items()}
    event = verifier.verify_body(body, lowered)
    assert type(event.data) is WebhookData and event.data.model_extra == {"click": {"id": "c1"}}
    assert event.created_at.isoformat() == "2025-01-14T04:49:30.459000+00:00"
    upper = {"Dub-Signature": headers["Dub-Signature"].upper()}
    assert verifier.verify_body(body, upper).id == "evt_1"
    assert issubclass(InvalidSignatureError, AttributionError)
    assert issubclass(InvalidWebhookError, AttributionError)
    with pytest.raises(InvalidSignatureError):
        verifier.verify_body(body, {"Dub-Signature": "é"})
    # The secret is used verbatim: the whsec_ prefix is part of the key.
    assert compute_signature(body, "whsec_x") != compute_signature(body, "x")


def test_typed_data_that_breaks_its_model_still_reaches_the_handler() -> None:
    payload = {"id": "evt_1", "event": "sale.created", "data": {"sale": {"amount": "lots"}}}
    event = WebhookVerifier(secrets="s").verify_body(*sign_webhook(payload, "s"))
    assert type(event.data) is WebhookData
    assert event.data.model_extra == {"sale": {"amount": "lots"}}


def test_sign_webhook_fills_id_and_created_at() -> None:
    body, headers = sign_webhook({"event": "sale.created", "data": {"name": "Zoë"}}, "whsec_x")
    document = json.loads(body)
    assert document["id"].startswith("evt_") and document["createdAt"].endswith("Z")
    assert "Zoë".encode() in body  # non-ASCII kept, as JSON.stringify writes it
    assert headers["Dub-Signature"] == compute_signature(body, "whsec_x")
    with pytest.raises(ValueError, match="unknown provider"):
        sign_webhook({}, "s", provider="acme")


def test_configuration_errors_are_raised_at_construction() -> None:
    with pytest.raises(ValueError, match="secrets"):
        WebhookVerifier(secrets=[])
    with pytest.raises(ValueError, match="secrets"):
        WebhookVerifier(secrets="")
    with pytest.raises(TypeError, match="WebhookVerifier"):
        webhook_endpoint("whsec_x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        webhook_endpoint(WebhookVerifier(secrets="s"), {"x": "nope"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="max_body"):
        webhook_endpoint(WebhookVerifier(secrets="s"), max_body=0)
    with pytest.raises(TypeError, match="dedupe"):
        webhook_endpoint(WebhookVerifier(secrets="s"), dedupe=42)  # type: ignore[arg-type]


def test_a_dedupe_file_of_an_earlier_version_keeps_its_ids_as_handled(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from asgi_attribution.webhooks import SQLiteDedupe

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before claims: (id, seen_at)
        db.execute("CREATE TABLE webhook_events (id TEXT PRIMARY KEY, seen_at REAL NOT NULL)")
        db.execute("INSERT INTO webhook_events VALUES ('evt_old', ?)", (time.time(),))
    db.close()
    store = SQLiteDedupe(path)

    async def claims() -> tuple[str, str, bool]:
        try:
            return (
                await store.claim("evt_old"),
                await store.claim("evt_new"),
                await store.seen("evt_old"),
            )
        finally:
            await store.aclose()

    assert asyncio.run(claims()) == ("handled", "claimed", True)


def test_a_redis_id_marked_by_an_earlier_version_is_handled(redis_url: str) -> None:
    import asyncio

    import redis

    from asgi_attribution.webhooks import RedisDedupe

    client = redis.Redis.from_url(redis_url)
    client.set("asgi_attribution:webhooks:evt_v0", b"1", ex=60)  # what mark() wrote before
    client.close()
    store = RedisDedupe(redis_url)

    async def claims() -> tuple[str, str, str]:
        try:
            first = await store.claim("evt_v0"), await store.claim("evt_v1")
            await store.release("evt_v1")
            return (*first, await store.claim("evt_v1"))
        finally:
            await store.aclose()

    assert asyncio.run(claims()) == ("handled", "claimed", "claimed")


def test_a_store_without_claims_is_refused_by_name() -> None:
    class Old:
        async def seen(self, event_id: str) -> bool:
            return False

        async def mark(self, event_id: str) -> None:
            pass

    with pytest.raises(TypeError, match="lacks claim, release, aclose"):
        webhook_endpoint(WebhookVerifier(secrets="s"), dedupe=Old())  # type: ignore[arg-type]


def test_memory_dedupe_forgets_past_max_entries_and_frees_a_stale_claim() -> None:
    import asyncio

    from asgi_attribution.webhooks import MemoryDedupe

    store = MemoryDedupe(max_entries=2, lease=0.05)

    async def run() -> list[str]:
        seen = [await store.claim("evt_1")]
        await store.mark("evt_1")
        await store.claim("evt_2")
        await store.claim("evt_3")  # evt_1 is forgotten: the documented limit
        seen.append(await store.claim("evt_1"))
        await asyncio.sleep(0.1)  # evt_3's claim outlived its lease (a handler that died)
        seen.append(await store.claim("evt_3"))
        return seen

    assert asyncio.run(run()) == ["claimed", "claimed", "claimed"]
