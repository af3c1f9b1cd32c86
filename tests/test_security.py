"""Trust and privacy: verified attribution (signed companion cookie), consent, GPC, clearing."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_attribution import (
    Attribution,
    AttributionMiddleware,
    Delivery,
    MemoryTransport,
    Tracker,
    TrackResult,
    Transport,
    clear_attribution,
    get_attribution,
    track_lead,
)
from asgi_attribution._signing import ClickSigner
from tests.support.asgi import client_for, raw_get, websocket_sent

pytestmark = pytest.mark.anyio

NEW, OLD = "new-secret-0123456789", "old-secret-9876543210"
DUB_SALT = "asgi-attribution.click.dub"


async def whoami(request: Request) -> Response:
    a = get_attribution(request)
    return JSONResponse(
        {
            "click_id": a.click_id,
            "source": a.source,
            "verified": a.verified,
            "partner": a.partner.name if a.partner else None,
        }
    )


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    a = get_attribution(websocket)
    await websocket.send_json({"click_id": a.click_id, "verified": a.verified})
    await websocket.close()


def app_with(tracker: Tracker | None = None, **options: Any) -> AttributionMiddleware:
    app = Starlette(routes=[Route("/", whoami), WebSocketRoute("/ws", ws_endpoint)])
    return AttributionMiddleware(
        app, tracker or Tracker("dub", transport=MemoryTransport()), **options
    )


def token(
    click_id: str, secrets: Any = NEW, *, at: float | None = None, salt: str = DUB_SALT
) -> str:
    if at is None:
        return ClickSigner(secrets, max_age=60, salt=salt).sign(click_id)
    return ClickSigner(secrets, max_age=60, salt=salt, clock=lambda: at).sign(click_id)


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


# -- verified attribution -------------------------------------------------------------------


async def test_landing_sets_a_signed_httponly_companion_and_is_verified() -> None:
    app = app_with(signing_secrets=NEW)
    async with client_for(app, base_url="https://www.example.com") as client:
        landing = await client.get("/?dub_id=clk1")
    plain, signed = set_cookies(landing)
    attrs = "Max-Age=7776000; Path=/; Domain=.example.com; SameSite=Lax; Secure"
    assert plain == f"dub_id=clk1; {attrs}"
    name, rest = signed.split("=", 1)
    value, _, signed_attrs = rest.partition("; ")
    assert name == "dub_id_sig"
    assert signed_attrs == f"{attrs}; HttpOnly"
    assert value.startswith("clk1.")
    assert ClickSigner(NEW, max_age=60, salt=DUB_SALT).verify(value, "clk1")
    assert landing.json() == {
        "click_id": "clk1",
        "source": "query",
        "verified": True,
        "partner": None,
    }


async def test_round_trip_in_a_cookie_jar_is_verified() -> None:
    app = app_with(signing_secrets=[NEW])
    async with client_for(app) as client:
        await client.get("/?dub_id=clk1")
        later = await client.get("/")
    assert later.json()["source"] == "cookie"
    assert later.json()["verified"] is True


async def test_without_secrets_no_companion_and_never_verified() -> None:
    async with client_for(app_with()) as client:
        landing = await client.get("/?dub_id=clk1")
        later = await client.get(
            "/", headers={"cookie": f"dub_id=clk1; dub_id_sig={token('clk1')}"}
        )
    assert [c.split("=")[0] for c in set_cookies(landing)] == ["dub_id"]
    assert landing.json()["verified"] is False
    assert later.json()["verified"] is False


def tamper(value: str) -> str:
    # Not the last character: its low bits are base64 padding, so changing them may not count.
    i = len(value) - 10
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


@pytest.mark.parametrize(
    "companion",
    [
        pytest.param(lambda: tamper(token("clk1")), id="tampered-signature"),
        pytest.param(lambda: "clk2" + token("clk1")[4:], id="tampered-click"),
        pytest.param(lambda: token("other"), id="signs-another-click"),
        pytest.param(lambda: token("clk1", "someone-elses-secret"), id="foreign-secret"),
        pytest.param(lambda: token("clk1", salt="asgi-attribution.click.pimms"), id="other-prov"),
        pytest.param(lambda: token("clk1", at=1_000_000_000), id="expired"),
        pytest.param(lambda: token("clk1", at=4_000_000_000), id="from-the-future"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "clk1", id="unsigned"),
        pytest.param(lambda: "clk1.!!.??", id="garbage"),
        pytest.param(lambda: "clk1." + "A" * 5000, id="huge"),
    ],
)
async def test_bad_companion_is_ignored_never_an_error(companion: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_attribution")
    app = app_with(signing_secrets=[NEW, OLD], verified_max_age=3600)
    async with client_for(app) as client:
        response = await client.get(
            "/", headers={"cookie": f"dub_id=clk1; dub_id_sig={companion()}"}
        )
    assert response.status_code == 200
    assert response.json()["click_id"] == "clk1"
    assert response.json()["verified"] is False
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]
    if companion():
        assert any("signed click cookie" in r.getMessage() for r in caplog.records)


async def test_expiry_follows_verified_max_age() -> None:
    # Signed now, or at a fixed moment long past: only the age decides, never a wall-clock wait.
    fresh, stale = token("clk1"), token("clk1", at=1_000_000_000)
    app = app_with(signing_secrets=NEW, verified_max_age=3600)
    forever = app_with(signing_secrets=NEW, verified_max_age=10**10)
    async with client_for(app) as client:
        ok = await client.get("/", headers={"cookie": f"dub_id=clk1; dub_id_sig={fresh}"})
        old = await client.get("/", headers={"cookie": f"dub_id=clk1; dub_id_sig={stale}"})
    async with client_for(forever) as client:
        kept = await client.get("/", headers={"cookie": f"dub_id=clk1; dub_id_sig={stale}"})
    assert ok.json()["verified"] is True
    assert old.json()["verified"] is False
    assert kept.json()["verified"] is True


async def test_verified_max_age_defaults_to_the_cookie_max_age() -> None:
    assert app_with(signing_secrets=NEW).signer.max_age == 7776000  # type: ignore[union-attr]
    assert app_with(signing_secrets=NEW, cookie_max_age=60).signer.max_age == 60  # type: ignore[union-attr]


async def test_rotation_first_secret_signs_all_verify() -> None:
    rotated = app_with(signing_secrets=[NEW, OLD])
    retired = app_with(signing_secrets=[NEW])
    old_token = token("clk1", OLD)
    cookie = {"cookie": f"dub_id=clk1; dub_id_sig={old_token}"}
    async with client_for(rotated) as client:
        assert (await client.get("/", headers=cookie)).json()["verified"] is True
        landing = await client.get("/?dub_id=clk2")
    async with client_for(retired) as client:
        assert (await client.get("/", headers=cookie)).json()["verified"] is False
    signed = set_cookies(landing)[1].split(";")[0].split("=", 1)[1]
    assert ClickSigner(NEW, max_age=60, salt=DUB_SALT).verify(signed, "clk2")
    assert not ClickSigner(OLD, max_age=60, salt=DUB_SALT).verify(signed, "clk2")


async def test_split_cookie_headers_still_verify() -> None:
    # HTTP/2 clients may send each cookie in its own header.
    app = app_with(signing_secrets=NEW)
    headers = [(b"cookie", b"dub_id=clk1"), (b"cookie", f"dub_id_sig={token('clk1')}".encode())]
    _, body = await raw_get(app, headers, http_version="2", scheme="https")
    assert b'"verified":true' in body


async def test_first_click_keeps_the_old_click_and_what_its_companion_said() -> None:
    app = app_with(signing_secrets=NEW, attribution_model="first-click")
    signed_old = {"cookie": f"dub_id=first; dub_id_sig={token('first')}"}
    unsigned_old = {"cookie": "dub_id=first"}
    async with client_for(app) as client:
        kept_signed = await client.get("/?dub_id=second", headers=signed_old)
        kept_unsigned = await client.get("/?dub_id=second", headers=unsigned_old)
    # The new click was not used, so nothing is signed for it; the old one keeps its status.
    assert set_cookies(kept_signed) == set_cookies(kept_unsigned) == []
    assert kept_signed.json()["click_id"] == kept_unsigned.json()["click_id"] == "first"
    assert kept_signed.json()["verified"] is True
    assert kept_unsigned.json()["verified"] is False


async def test_a_typed_in_cookie_is_not_verified_even_after_a_signed_landing() -> None:
    app = app_with(signing_secrets=NEW)
    async with client_for(app) as client:
        await client.get("/?dub_id=real")
        # A page script (or the visitor) overwrites the readable cookie; the signed one stays.
        jar = client.cookies.jar
        for cookie in [c for c in jar if c.name == "dub_id"]:
            jar.clear(cookie.domain, cookie.path, cookie.name)
        client.cookies.set("dub_id", "typed")
        response = await client.get("/")
    assert response.json()["click_id"] == "typed"
    assert response.json()["verified"] is False


async def test_pimms_companion_is_named_after_its_cookie() -> None:
    app = app_with(Tracker("pimms", transport=MemoryTransport()), signing_secrets=NEW)
    async with client_for(app) as client:
        landing = await client.get("/?pimms_id=p1")
        later = await client.get("/")
    assert [c.split("=")[0] for c in set_cookies(landing)] == ["pimms_id", "pimms_id_sig"]
    assert later.json()["verified"] is True


@pytest.mark.parametrize("secrets", ["", [], ["ok", ""]])
def test_empty_secrets_are_a_clear_error(secrets: Any) -> None:
    with pytest.raises(ValueError, match="signing_secrets"):
        app_with(signing_secrets=secrets)


def test_negative_verified_max_age_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="verified_max_age"):
        app_with(signing_secrets=NEW, verified_max_age=-1)


def test_secrets_are_not_shown() -> None:
    app = app_with(signing_secrets=[NEW, OLD])
    assert NEW not in repr(app.signer) and OLD not in repr(app.signer)
    assert NEW not in repr(vars(app)) and OLD not in repr(vars(app))


# -- consent and Global Privacy Control ------------------------------------------------------


def consent_cookie(connection: HTTPConnection) -> bool:
    return connection.cookies.get("consent") == "yes"


async def test_without_consent_nothing_is_captured_or_set() -> None:
    app = app_with(consent=consent_cookie, signing_secrets=NEW)
    partner = '{"partner":{"name":"Ada"}}'
    async with client_for(app) as client:
        landing = await client.get("/?dub_id=clk1")
        returning = await client.get(
            "/", headers={"cookie": f"dub_id=clk1; dub_partner_data={partner}"}
        )
    assert set_cookies(landing) == []
    expected = {"click_id": None, "source": None, "verified": False, "partner": None}
    assert landing.json() == returning.json() == expected


async def test_with_consent_everything_works_as_usual() -> None:
    app = app_with(consent=consent_cookie, signing_secrets=NEW)
    async with client_for(app) as client:
        client.cookies.set("consent", "yes")
        landing = await client.get("/?dub_id=clk1")
        later = await client.get("/")
    assert [c.split("=")[0] for c in set_cookies(landing)] == ["dub_id", "dub_id_sig"]
    assert later.json()["click_id"] == "clk1" and later.json()["verified"] is True


async def test_async_consent_is_awaited() -> None:
    answers = {"yes": True, "no": False}

    async def consent(connection: HTTPConnection) -> bool:
        return answers[connection.query_params.get("c", "no")]

    async with client_for(app_with(consent=consent)) as client:
        allowed = await client.get("/?dub_id=clk1&c=yes")
        refused = await client.get("/?dub_id=clk1&c=no")
    assert allowed.json()["click_id"] == "clk1"
    assert refused.json()["click_id"] is None and set_cookies(refused) == []


async def test_consent_is_asked_only_when_there_is_a_click() -> None:
    calls: list[str] = []

    def consent(connection: HTTPConnection) -> bool:
        calls.append(connection.url.path)
        return True

    async with client_for(app_with(consent=consent)) as client:
        await client.get("/", headers={"cookie": "other=1"})
        await client.get("/?dub_id=clk1")
    assert calls == ["/"]  # once: for the landing, not for the organic request


async def test_a_failing_consent_callable_means_no_consent_not_an_error(caplog: Any) -> None:
    def consent(connection: HTTPConnection) -> bool:
        raise RuntimeError("consent store is down")

    async with client_for(app_with(consent=consent)) as client:
        response = await client.get("/?dub_id=clk1")
    assert response.status_code == 200
    assert response.json()["click_id"] is None and set_cookies(response) == []
    assert any("consent callable failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("honor_gpc", "gpc", "captured"),
    [(True, "1", False), (True, " 1 ", False), (True, "0", True), (False, "1", True)],
)
async def test_global_privacy_control(honor_gpc: bool, gpc: str, captured: bool) -> None:
    async with client_for(app_with(honor_gpc=honor_gpc)) as client:
        response = await client.get("/?dub_id=clk1", headers={"sec-gpc": gpc})
        returning = await client.get("/", headers={"sec-gpc": gpc, "cookie": "dub_id=clk1"})
    assert (response.json()["click_id"] == "clk1") is captured
    assert (returning.json()["click_id"] == "clk1") is captured
    assert bool(set_cookies(response)) is captured


async def test_websocket_without_consent_has_no_click() -> None:
    app = app_with(consent=lambda c: False)
    sent = await websocket_sent(app, [(b"cookie", b"dub_id=wsclick")])
    assert sent == {"click_id": None, "verified": False}


# -- clearing after acceptance ---------------------------------------------------------------


class FixedTransport(Transport):
    """Answers every event with the same status, to test what clearing does with each."""

    def __init__(self, status: str, durable: bool = False) -> None:
        self.status = status
        self.durable = durable

    async def send(self, delivery: Delivery) -> TrackResult:
        return TrackResult(self.status, delivery.event, durable=self.durable)  # type: ignore[arg-type]


def signup_app(transport: Transport, provider: str = "dub", **options: Any) -> Any:
    async def signup(request: Request) -> Response:
        response = JSONResponse({})
        result = await track_lead(request, "Sign up", customer_external_id="u1")
        cleared = clear_attribution(request, response, result)
        response.body = response.render({"status": result.status, "cleared": cleared})
        response.headers["content-length"] = str(len(response.body))
        return response

    app = Starlette(routes=[Route("/signup", signup, methods=["POST"])])
    return AttributionMiddleware(app, Tracker(provider, transport=transport), **options)


@pytest.mark.parametrize(
    ("transport", "cleared"),
    [
        (MemoryTransport(), True),  # the provider (here, memory) took it: "sent"
        (FixedTransport("queued", durable=True), True),  # a durable outbox holds it
        (FixedTransport("queued"), False),  # only in memory: could still be lost
    ],
)
async def test_cookies_are_cleared_only_after_acceptance(
    transport: Transport, cleared: bool
) -> None:
    app = signup_app(transport, signing_secrets=NEW, cookie_path="/app")
    async with client_for(app, base_url="https://www.example.com") as client:
        response = await client.post(
            "/signup", headers={"cookie": f"dub_id=clk1; dub_id_sig={token('clk1')}"}
        )
    assert response.json()["cleared"] is cleared
    if not cleared:
        assert set_cookies(response) == []
        return
    assert set_cookies(response) == [
        f'{name}=""; Max-Age=0; Path=/app; Domain=.example.com'
        for name in ("dub_id", "dub_partner_data", "dub_id_sig")
    ]


async def test_organic_signup_clears_nothing() -> None:
    async with client_for(signup_app(MemoryTransport())) as client:
        response = await client.post("/signup")
    assert response.json() == {"status": "skipped", "cleared": False}
    assert set_cookies(response) == []


async def test_clearing_on_a_landing_wins_over_setting() -> None:
    # A signup straight from the link: the lead is sent, the click cleared, and the middleware
    # does not set the cookie again behind the app's back.
    app = signup_app(MemoryTransport(), signing_secrets=NEW)
    async with client_for(app, base_url="http://localhost") as client:
        response = await client.post("/signup?dub_id=clk1")
    assert response.json() == {"status": "sent", "cleared": True}
    assert [c.split(";")[0] for c in set_cookies(response)] == [
        'dub_id=""',
        'dub_partner_data=""',
        'dub_id_sig=""',
    ]


async def test_clearing_for_pimms_deletes_the_legacy_cookie_too() -> None:
    async with client_for(signup_app(MemoryTransport(), "pimms")) as client:
        response = await client.post("/signup", headers={"cookie": "dclid=legacy"})
    assert [c.split(";")[0] for c in set_cookies(response)] == ['pimms_id=""', 'dclid=""']


async def test_clearing_without_the_middleware_keeps_the_cookies_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asgi_attribution import DUB

    request = Request(
        {"type": "http", "headers": [], "asgi_attribution": Attribution(DUB, click_id="c")}
    )
    response = Response()
    assert clear_attribution(request, response, TrackResult("sent")) is False
    assert "set-cookie" not in response.headers
    assert "add AttributionMiddleware" in caplog.text


# -- secrets -----------------------------------------------------------------------------------

CANARY = "dub_LEAKCANARY_7f3a9c2e51b84d06"


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def exception_texts(exc: BaseException | None) -> list[str]:
    import traceback

    texts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
        texts += traceback.format_exception(type(exc), exc, exc.__traceback__)
        # Error reporters such as Sentry capture every frame's local variables.
        frame = exc.__traceback__
        while frame is not None:
            texts += [repr(frame.tb_frame.f_locals)]
            frame = frame.tb_next
        exc = exc.__cause__ or exc.__context__
    return texts


async def test_the_api_key_never_appears_in_logs_errors_or_reprs(caplog: Any) -> None:
    from asgi_attribution import DeliveryError, HTTPTransport, RetryPolicy
    from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

    caplog.set_level(logging.DEBUG)
    for name in ("asgi_attribution", "httpx", "httpcore", "uvicorn", "uvicorn.error"):
        caplog.set_level(logging.DEBUG, logger=name)
    quick = RetryPolicy(max_elapsed=0.3, initial_backoff=0.01, max_backoff=0.02)
    texts: list[str] = []
    outcomes: list[str] = []

    async def lead(base_url: str, provider: str = "dub") -> None:
        transport = HTTPTransport(CANARY, base_url=base_url, retry=quick)
        tracker = Tracker(provider, transport=transport)
        default = Tracker(provider, api_key=CANARY, base_url=base_url, retry=quick)
        texts.extend([repr(tracker), repr(transport), repr(default), str(transport.api_key)])
        texts.extend([repr(vars(tracker)), repr(vars(transport)), repr(vars(default))])
        async with tracker:
            try:
                result = await tracker.track_lead(
                    click_id="clk1", event_name="Sign up", customer_external_id="u1"
                )
                outcomes.append(result.status)
                texts.append(repr(result))
            except DeliveryError as exc:
                outcomes.append(f"error {exc.status_code}")
                texts.extend(exception_texts(exc))

    with serve_in_thread(FakeProvider("dub", api_key="the-right-key")) as url:
        await lead(url)  # 401: wrong key
    with serve_in_thread(FakeProvider("pimms", api_key=CANARY)) as url:
        await lead(url)  # 422: Dub's body sent to PIMMS
    with serve_in_thread(FakeProvider("dub", faults=Faults(error_rate=1.0))) as url:
        await lead(url)  # 503 until the retry budget is spent
    await lead(closed_port_url())  # connection refused
    with serve_in_thread(FakeProvider("dub", api_key=CANARY)) as url:
        await lead(url)  # 200

    assert outcomes == ["error 401", "error 422", "error 503", "error None", "sent"]
    texts.append(caplog.text)
    texts.extend(r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records)
    assert any("retrying" in r.getMessage() for r in caplog.records)  # logs were captured
    leaks = [t for t in texts if CANARY in t or CANARY[4:20] in t]
    assert leaks == [], "the API key leaked"


# -- regressions from the fuzzer --------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "www..ex.:co\\",  # atheris: became "Domain=..ex", which browsers refuse
        "a..b.example.com",
        "-a.example.com",
        "a-.example.com",
        "example.com:abc",
        "example.com:",
        "example.com..",
        "exa_mple.com",
        "a" * 64 + ".example.com",
    ],
)
async def test_malformed_host_gets_a_host_only_cookie(host: str) -> None:
    async with client_for(app_with()) as client:
        response = await client.get("/?dub_id=clk1", headers={"host": host})
    assert set_cookies(response) == ["dub_id=clk1; Max-Age=7776000; Path=/; SameSite=Lax"]


@pytest.mark.parametrize(
    ("host", "domain"),
    [("www.ex", ".www.ex"), ("www.example.com", ".example.com"), ("shop.ex", ".shop.ex")],
)
async def test_www_is_kept_when_removing_it_leaves_a_single_label(host: str, domain: str) -> None:
    # The fuzzer found "www.ex" -> "Domain=.ex", which browsers refuse: the click would be lost.
    async with client_for(app_with()) as client:
        response = await client.get("/?dub_id=clk1", headers={"host": host})
    assert set_cookies(response) == [
        f"dub_id=clk1; Max-Age=7776000; Path=/; Domain={domain}; SameSite=Lax"
    ]


async def test_the_api_key_never_reaches_the_outbox(tmp_path: Any, caplog: Any) -> None:
    from asgi_attribution import RetryPolicy
    from asgi_attribution.transports.outbox import OutboxTransport

    caplog.set_level(logging.DEBUG)
    outbox = OutboxTransport(
        tmp_path / "events.db",
        api_key=CANARY,
        base_url=closed_port_url(),  # nothing answers: the event stays in the store
        retry=RetryPolicy(max_elapsed=0.2, initial_backoff=0.01, max_backoff=0.02),
        poll_interval=0.01,
        shutdown_timeout=0.2,
    )
    tracker = Tracker("dub", transport=outbox)
    async with tracker:
        result = await tracker.track_lead(
            click_id="clk1", event_name="Sign up", customer_external_id="u1"
        )
    assert result.accepted  # durable: it really is in the store
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"clk1" in stored  # the store was read (the event is there)
    assert CANARY.encode() not in stored
    assert CANARY not in caplog.text and CANARY not in repr(outbox) + repr(vars(outbox))
