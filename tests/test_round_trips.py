"""OAuth round trips: ``attribution_state(request)`` before the flow, ``restore_attribution(...)``
at a callback that arrives without the cookies; the lead then carries the click, at the fake
provider over a real socket. Bad, tampered, foreign and expired tokens only log a WARNING."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Form
from fastapi import Request as FastAPIRequest
from litestar import Litestar, get, post
from litestar import Request as LitestarRequest
from litestar.response.base import ASGIResponse
from litestar.testing import TestClient as LitestarClient
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    RetryPolicy,
    Tracker,
    attribution_state,
    get_attribution,
    restore_attribution,
    track_lead,
)
from asgi_attribution._signing import StateTokens
from asgi_attribution.litestar import AttributionPlugin
from asgi_attribution.testing import FakeProvider

from .support.asgi import KEY

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient

SECRET = "long-random-secret"
PARTNER = '{"clickId":"clk1","partner":{"id":"pn_1","name":"Ada%20L."}}'


def tracker_for(url: str) -> Tracker:
    return Tracker(
        "dub", api_key=KEY, base_url=url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1)
    )


def seen_of(request: Any) -> dict[str, Any]:
    a = get_attribution(request)
    return {
        "click_id": a.click_id,
        "source": a.source,
        "verified": a.verified,
        "partner": a.partner.name if a.partner else None,
    }


# -- one site per framework: GET /login gives the state; POST /callback restores, tracks a lead --


def starlette_site(tracker: Tracker, **options: Any) -> Any:
    async def login(request: Request) -> Response:
        return PlainTextResponse(attribution_state(request))

    async def callback(request: Request) -> Response:
        form = await request.form()
        response = JSONResponse({})
        restored = restore_attribution(request, response, str(form["state"]))
        result = await track_lead(request, "Sign up", customer_external_id=str(form["user"]))
        body = {**seen_of(request), "restored": restored, "status": result.status}
        answer = JSONResponse(body)
        for value in response.headers.getlist("set-cookie"):
            answer.headers.append("set-cookie", value)
        return answer

    app = Starlette(routes=[Route("/login", login), Route("/callback", callback, methods=["POST"])])
    app.add_middleware(AttributionMiddleware, tracker=tracker, **options)
    return app


def fastapi_site(tracker: Tracker, **options: Any) -> Any:
    app = FastAPI()

    @app.get("/login")
    async def login(request: FastAPIRequest) -> PlainTextResponse:
        return PlainTextResponse(attribution_state(request))

    @app.post("/callback")
    async def callback(
        request: FastAPIRequest, response: Response, state: str = Form(""), user: str = Form()
    ) -> dict[str, Any]:
        # FastAPI's injected Response: its cookies are copied to the answer.
        restored = restore_attribution(request, response, state)
        result = await track_lead(request, "Sign up", customer_external_id=user)
        return {**seen_of(request), "restored": restored, "status": result.status}

    app.add_middleware(AttributionMiddleware, tracker=tracker, **options)
    return app


def litestar_site(tracker: Tracker, **options: Any) -> Any:
    @get("/login")
    async def login(request: LitestarRequest[Any, Any, Any]) -> str:
        return attribution_state(request)

    @post("/callback", status_code=200)
    async def callback(request: LitestarRequest[Any, Any, Any]) -> ASGIResponse:
        form = await request.form()
        carrier = Response()  # restore_attribution takes a Starlette response: copy its cookies
        restored = restore_attribution(request, carrier, form["state"])
        result = await track_lead(request, "Sign up", customer_external_id=form["user"])
        body = {**seen_of(request), "restored": restored, "status": result.status}
        cookies = carrier.headers.getlist("set-cookie")
        # Several Set-Cookie headers: Litestar's Response keeps one per name, its ASGI one all.
        return ASGIResponse(
            body=json.dumps(body),
            media_type="application/json",
            status_code=200,
            headers=[("set-cookie", c) for c in cookies],
        )

    plugin = AttributionPlugin(tracker=tracker, **options)
    return Litestar([login, callback], plugins=[plugin], logging_config=None)


SITES: dict[str, tuple[Callable[..., Any], Any]] = {
    "starlette": (starlette_site, TestClient),
    "fastapi": (fastapi_site, TestClient),
    "litestar": (litestar_site, LitestarClient),
}


@pytest.fixture(params=sorted(SITES))
def served(request: pytest.FixtureRequest, url: str) -> Callable[..., Any]:
    factory, client_class = SITES[request.param]

    @contextmanager
    def serve(**options: Any) -> Iterator[Any]:
        app = factory(tracker_for(url), **{"signing_secrets": SECRET, **options})
        with client_class(app, base_url="https://shop.example.com") as client:
            yield client

    return serve


def cookies_of(response: Any) -> dict[str, str]:
    return {
        c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0]
        for c in response.headers.get_list("set-cookie")
    }


def state_for(client: Any, cookie: str) -> str:
    token = client.get("/login", headers={"cookie": cookie}).text
    client.cookies.clear()
    return str(token)


def callback(client: Any, state: Any, user: str, cookie: str | None = None) -> Any:
    headers = {"cookie": cookie} if cookie else {}
    client.cookies.clear()  # a cross-site form_post carries no SameSite=Lax cookie
    return client.post("/callback", data={"state": state, "user": user}, headers=headers)


# -- the round trip ------------------------------------------------------------------------------


def test_the_callback_restores_the_click_and_the_lead_carries_it(
    served: Callable[..., Any], provider: FakeProvider
) -> None:
    with served() as client:
        state = state_for(client, f"dub_id=clk1; dub_partner_data={PARTNER}")
        assert len(state) <= 512
        answer = callback(client, state, "user_1")
    body = answer.json()
    assert body == {
        "click_id": "clk1",
        "source": "restored",
        "verified": False,  # a plain cookie: the server never saw it arrive
        "partner": "Ada L.",
        "restored": True,
        "status": "queued",
    }
    cookies = cookies_of(answer)
    assert cookies["dub_id"] == "clk1" and "dub_partner_data" in cookies
    assert "dub_id_sig" not in cookies  # never vouch for what was not verified
    assert [(lead["clickId"], lead["customerExternalId"]) for lead in provider.leads()] == [
        ("clk1", "user_1")
    ]


def test_a_verified_click_comes_back_verified(served: Callable[..., Any]) -> None:
    with served() as client:
        landing = client.get("/login?dub_id=clk1")  # a landing: verified, signed companion
        companion = cookies_of(landing)["dub_id_sig"]
        state = state_for(client, f"dub_id=clk1; dub_id_sig={companion}")
        answer = callback(client, state, "user_1")
    assert answer.json()["verified"] is True
    assert set(cookies_of(answer)) == {"dub_id", "dub_id_sig"}


def test_a_request_with_its_own_click_keeps_it(
    served: Callable[..., Any], provider: FakeProvider
) -> None:
    with served() as client:
        state = state_for(client, "dub_id=clk1")
        answer = callback(client, state, "user_1", cookie="dub_id=clk2")
    assert answer.json()["click_id"] == "clk2" and answer.json()["restored"] is False
    assert "dub_id" not in cookies_of(answer)
    assert [lead["clickId"] for lead in provider.leads()] == ["clk2"]


def test_a_callback_that_opts_out_restores_nothing(served: Callable[..., Any]) -> None:
    with served(honor_gpc=True) as client:
        state = state_for(client, "dub_id=clk1")
        client.cookies.clear()
        answer = client.post(
            "/callback", data={"state": state, "user": "u1"}, headers={"sec-gpc": "1"}
        )
    assert answer.json()["restored"] is False and answer.json()["click_id"] is None
    assert "dub_id" not in cookies_of(answer)


def test_an_organic_state_restores_nothing_quietly(
    served: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with served() as client:
        state = state_for(client, "")
        with caplog.at_level(logging.WARNING, "asgi_attribution"):
            answer = callback(client, state, "user_1")
    assert answer.json()["restored"] is False and answer.json()["status"] == "skipped"
    assert not [r for r in caplog.records if "attribution state" in r.getMessage()]


def test_a_rotated_secret_still_restores(url: str) -> None:
    old = starlette_site(tracker_for(url), signing_secrets="old-secret")
    with TestClient(old) as client:
        state = state_for(client, "dub_id=clk1")
    new = starlette_site(tracker_for(url), signing_secrets=["new-secret", "old-secret"])
    with TestClient(new) as client:
        assert callback(client, state, "user_1").json()["click_id"] == "clk1"


def test_an_oversized_partner_cookie_is_left_out_and_the_click_kept(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    huge = '{"partner":{"name":"' + "".join(f"{i:x}" for i in range(400)) + '"}}'
    with TestClient(starlette_site(tracker_for(url), signing_secrets=SECRET)) as client:
        with caplog.at_level(logging.WARNING, "asgi_attribution"):
            state = state_for(client, f"dub_id=clk1; dub_partner_data={huge}")
        assert len(state) <= 512
        assert any("partner cookie" in r.getMessage() for r in caplog.records)
        body = callback(client, state, "user_1").json()
    assert body["click_id"] == "clk1" and body["partner"] is None


# -- tokens that restore nothing: a WARNING, never an exception ----------------------------------


def our_tokens(clock: Callable[[], float] = time.time, secret: str = SECRET) -> StateTokens:
    return StateTokens(secret, salt="asgi-attribution.state.dub", clock=clock)


def bad_tokens(good: str) -> dict[str, Any]:
    head, _, signature = good.rpartition(".")
    # The first character: the last one of base64 carries padding bits, and a change there can
    # decode to the same signature.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    _, _, rest = good.partition(".")
    return {
        "garbage": "not-a-token",
        "empty": "",
        "tampered signature": f"{head}.{flipped}",
        "tampered payload": our_tokens().dumps({"c": "clk9"}).partition(".")[0] + "." + rest,
        "expired": our_tokens(clock=lambda: time.time() - 7200).dumps({"c": "clk1"}),
        "foreign secret": our_tokens(secret="someone-else").dumps({"c": "clk1"}),
        "foreign provider": StateTokens(SECRET, salt="asgi-attribution.state.pimms").dumps(
            {"c": "clk1"}
        ),
        "oversized": good + "A" * 600,
        "an invalid click id": our_tokens().dumps({"c": "bad id <script>"}),
        "a payload that is no object": our_tokens().dumps(["clk1"]),  # type: ignore[arg-type]
    }


def test_bad_tokens_only_warn(
    served: Callable[..., Any], provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: every kind of bad token at the callback, then a signup on each. Counted:
    sent (callbacks), delivered (leads at the provider with a click), reported (WARNING lines
    naming the token), silently lost (neither)."""
    with served() as client:
        good = state_for(client, "dub_id=clk1")
        bad = bad_tokens(good)
        sent = reported = 0
        for user, (name, token) in enumerate(sorted(bad.items())):
            caplog.clear()
            with caplog.at_level(logging.WARNING, "asgi_attribution"):
                answer = callback(client, token, f"user_{user}")
            sent += 1
            assert answer.status_code == 200, name
            body = answer.json()
            assert body["restored"] is False and body["click_id"] is None, name
            assert body["status"] == "skipped", name
            assert "dub_id" not in cookies_of(answer), name
            warned = [r for r in caplog.records if "attribution state ignored" in r.getMessage()]
            assert len(warned) == 1, (name, [r.getMessage() for r in caplog.records])
            reported += 1
        valid = callback(client, good, "user_good")
        sent += 1
        assert valid.json()["restored"] is True
    delivered = [lead for lead in provider.leads() if lead.get("clickId")]
    assert [lead["clickId"] for lead in delivered] == ["clk1"]
    duplicates = len(delivered) - len({lead["customerExternalId"] for lead in delivered})
    silently_lost = sent - len(delivered) - reported
    assert (sent, len(delivered), duplicates, reported, silently_lost) == (11, 1, 0, 10, 0)


# -- setup mistakes: clear errors at the first call ------------------------------------------------


def test_without_signing_secrets_both_raise_at_the_first_call(url: str) -> None:
    errors: list[str] = []

    async def login(request: Request) -> Response:
        try:
            attribution_state(request)
        except RuntimeError as exc:
            errors.append(str(exc))
        try:
            restore_attribution(request, Response(), "whatever")
        except RuntimeError as exc:
            errors.append(str(exc))
        return Response()

    app = Starlette(routes=[Route("/login", login)])
    app.add_middleware(AttributionMiddleware, tracker=tracker_for(url))
    with TestClient(app) as client:
        client.get("/login")
    assert len(errors) == 2
    assert errors[0].startswith("attribution_state() signs its token")
    assert errors[1].startswith("restore_attribution() signs its token")
    assert all("AttributionMiddleware(signing_secrets=...)" in e for e in errors)


def test_without_the_middleware_it_says_how_to_add_it() -> None:
    with pytest.raises(RuntimeError, match="add AttributionMiddleware"):
        attribution_state(Request({"type": "http", "headers": []}))


@pytest.mark.parametrize(
    ("response", "max_age", "error", "match"),
    [
        ({"not": "a response"}, 3600, TypeError, r"restore_attribution\(response=\.\.\.\)"),
        (None, 3600, TypeError, "got NoneType"),
        ("response", 0, ValueError, r"restore_attribution\(max_age=\.\.\.\) must be an integer"),
        ("response", "1h", TypeError, r"restore_attribution\(max_age=\.\.\.\)"),
    ],
)
def test_wrong_arguments_are_named(
    url: str, response: Any, max_age: Any, error: type[Exception], match: str
) -> None:
    raised: list[Exception] = []

    async def cb(request: Request) -> Response:
        given = RedirectResponse("/") if response == "response" else response
        try:
            restore_attribution(request, given, "garbage", max_age=max_age)
        except Exception as exc:
            raised.append(exc)
        return Response()

    app = Starlette(routes=[Route("/cb", cb)])
    app.add_middleware(AttributionMiddleware, tracker=tracker_for(url), signing_secrets=SECRET)
    with TestClient(app) as client:
        client.get("/cb")
    assert len(raised) == 1 and isinstance(raised[0], error)
    with pytest.raises(error, match=match):
        raise raised[0]


def test_the_token_carries_the_touchpoints_and_the_callback_restores_them(
    served: Callable[..., Any], provider: FakeProvider, url: str
) -> None:
    with served(touchpoints=True) as client:
        # A landing on the login page itself, with campaign tags: its touch goes in the token.
        landing = "/login?utm_source=news&utm_campaign=spring&gclid=g1"
        state = client.get(landing, headers={"cookie": "dub_id=clk1"}).text
        assert len(state) <= 512
        answer = callback(client, state, "user_t")
    assert answer.json()["source"] == "restored"
    touch_cookie = cookies_of(answer)["attribution_touch"]
    tokens = StateTokens(SECRET, salt="asgi-attribution.state.dub")
    assert tokens.loads(state, max_age=60)["t"]["f"]["utm_campaign"] == "spring"
    assert touch_cookie  # the callback's answer sets the touch cookie the cross-site post lost
    (lead,) = provider.leads()
    assert lead["clickId"] == "clk1"


def test_restored_touchpoints_reach_the_leads_metadata(url: str, provider: FakeProvider) -> None:
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
        touchpoints_metadata_key="touchpoints",
    )
    app = starlette_site(tracker, signing_secrets=SECRET, touchpoints=True)
    with TestClient(app, base_url="https://shop.example.com") as client:
        state = client.get("/login?utm_source=news", headers={"cookie": "dub_id=clk1"}).text
        client.cookies.clear()
        answer = client.post("/callback", data={"state": state, "user": "user_m"})
    assert answer.json()["restored"] is True
    (lead,) = provider.leads()
    touches = lead["metadata"]["touchpoints"]
    assert touches["first"]["utm_source"] == touches["last"]["utm_source"] == "news"
    assert touches["first"]["path"] == "/login"
