"""The demo journey: click -> landing with ?dub_id= -> cookie -> signup -> the lead for Dub.

``asgi-attribution demo`` runs a tiny site shipped in the package (or another app with
``--app``) in-process, captures the events in place of Dub (no account, no network) and prints
each step and the exact JSON that would be sent. The site (:func:`create_app`) is a Starlette
app with :class:`~asgi_attribution.AttributionMiddleware`: a landing, a pricing page, and a
signup that credits the lead to the click with :func:`~asgi_attribution.track_lead`. With no
tracker given, leads go to a :class:`~asgi_attribution.MemoryTransport` (nothing leaves the
process). The richer example site, with a partner banner and form validation, is
``examples/app.py`` in the repository.

Example:
    >>> import httpx
    >>> from asgi_attribution import testing
    >>> async def visit():
    ...     transport = httpx.ASGITransport(app=create_app())
    ...     async with httpx.AsyncClient(
    ...         transport=transport, base_url="https://shop.example", follow_redirects=True
    ...     ) as client:
    ...         await client.get("/", params={"dub_id": "clk123"})
    ...         return await client.post("/signup", data={"name": "Ada", "email": "a@b.example"})
    >>> import asyncio
    >>> with testing.capture_events() as events:
    ...     welcome = asyncio.run(visit())
    >>> "credited to click clk123" in welcome.text, events.leads[0].click_id
    (True, 'clk123')
"""

from __future__ import annotations

import html
import importlib
import inspect
import itertools
import json
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import AttributionMiddleware, MemoryTransport, Tracker, get_attribution, track_lead
from ..testing._capture import capture_events
from .common import UsageError

__all__ = ["create_app", "load_app", "run_demo"]


def create_app(tracker: Tracker | None = None) -> Starlette:
    """The demo site; ``tracker`` defaults to Dub's, recording leads in a ``MemoryTransport``.

    Example:
        >>> create_app().routes[0].path
        '/'
    """
    tracker = tracker or Tracker("dub", transport=MemoryTransport())
    # Signups of this process: user id -> (name, credited click id or None).
    users: dict[str, tuple[str, str | None]] = {}
    ids = itertools.count(1)

    async def landing(request: Request) -> Response:
        return _page("Acme", '<p>Ship faster with Acme.</p><a href="/pricing">Pricing</a>')

    async def pricing(request: Request) -> Response:
        return _page("Pricing", '<p>Team: $12 a seat.</p><a href="/signup">Start free</a>')

    async def signup_form(request: Request) -> Response:
        form = (
            '<form method="post" action="/signup"><input name="name" placeholder="Name">'
            '<input name="email" placeholder="Email"><button>Sign up</button></form>'
        )
        return _page("Sign up", form)

    async def signup(request: Request) -> Response:
        # A urlencoded form, read without python-multipart (not a dependency of the package).
        form = parse_qs((await request.body()).decode())
        name = form.get("name", [""])[0].strip() or "there"
        email = form.get("email", [""])[0].strip() or None
        user_id = f"user_{next(ids)}"
        await track_lead(
            request,
            "Sign up",
            customer_external_id=user_id,
            customer_name=name,
            customer_email=email,
        )
        users[user_id] = (name, get_attribution(request).click_id)
        return RedirectResponse(f"/welcome/{user_id}", status_code=303)

    async def welcome(request: Request) -> Response:
        user = users.get(request.path_params["user_id"])
        if user is None:
            return _page("Not found", "<p>No such account.</p>", status_code=404)
        name, click_id = user
        credit = f"credited to click {html.escape(click_id)}" if click_id else "an organic signup"
        return _page("Welcome", f"<p>Thanks, {html.escape(name)}! Your signup was {credit}.</p>")

    routes = [
        Route("/", landing),
        Route("/pricing", pricing),
        Route("/signup", signup_form, methods=["GET"]),
        Route("/signup", signup, methods=["POST"]),
        Route("/welcome/{user_id}", welcome),
    ]
    return Starlette(routes=routes, middleware=[Middleware(AttributionMiddleware, tracker=tracker)])


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<h1>{html.escape(title)}</h1>{body}</html>"
    )
    return HTMLResponse(document, status_code=status_code)


CLICK_ID = "cm3demo7Qx2Lp9"

SITE = "https://www.acme.example"


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (a factory taking ``tracker=``, or an ASGI app).

    The current directory is searched first, so ``examples.app:create_app`` is found from the
    repository's root. A target that cannot be loaded raises :class:`UsageError`.

    Example:
        >>> load_app("asgi_attribution._cli.demo:create_app").__name__
        'create_app'
    """
    module_name, _, attribute = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as exc:  # ValueError: an empty module name
        raise UsageError(
            f"cannot import {module_name!r} ({exc}); check --app module:attribute "
            "(the current directory is searched first)"
        ) from None
    finally:
        sys.path.pop(0)
    try:
        return getattr(module, attribute or "app")
    except AttributeError:
        raise UsageError(f"{module_name!r} has no attribute {attribute!r}") from None


def _is_factory(target: Any) -> bool:
    # An ASGI app is callable too; a factory is told apart by its tracker= parameter.
    try:
        return "tracker" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


async def run_demo(target: str | None = None, out: TextIO | None = None) -> int:
    """Walk a visitor from a Dub link to a tracked signup and print what happens.

    ``target`` is ``module:attribute`` of another app; by default the built-in demo site.
    ``out`` defaults to the standard output at the time of the call. Returns the exit code: 0
    when the signup was credited to the click.

    Example:
        >>> import asyncio, io
        >>> out = io.StringIO()
        >>> asyncio.run(run_demo(out=out))
        0
        >>> print(out.getvalue().splitlines()[1])
           GET /?dub_id=cm3demo7Qx2Lp9 -> 200
    """
    factory: Any = create_app if target is None else load_app(target)
    app = (
        factory(tracker=Tracker("dub", api_key="dub_demo_key")) if _is_factory(factory) else factory
    )

    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream)

    with capture_events() as sink:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=SITE) as client:
            say(f"1. A visitor clicks https://dub.sh/acme; Dub redirects to {SITE}/?dub_id=...")
            landing = await client.get("/", params={"dub_id": CLICK_ID})
            say(f"   GET /?dub_id={CLICK_ID} -> {landing.status_code}")
            say(f"   Set-Cookie: {landing.headers.get('set-cookie')}")
            say("2. The visitor browses (the cookie goes along, no JavaScript needed)")
            pricing = await client.get("/pricing")
            say(f"   GET /pricing -> {pricing.status_code} (cookie dub_id={CLICK_ID})")
            say("3. The visitor signs up")
            signup = await client.post(
                "/signup", data={"name": "Ada Lovelace", "email": "ada@example.com"}
            )
            say(f"   POST /signup -> {signup.status_code}, Location: {signup.headers['location']}")
            welcome = await client.get(signup.headers["location"])
            credited = "credited to click" in welcome.text and CLICK_ID in welcome.text
            say(
                f"   GET {signup.headers['location']} -> {welcome.status_code}"
                f" ({'credited to ' + CLICK_ID if credited else 'NOT credited'})"
            )

    if not sink.deliveries:
        say("No lead was tracked: something is wrong with the demo app.")
        return 1
    say("4. The handler's track_lead(...) produced this request for Dub:")
    for delivery in sink.deliveries:
        request = delivery.request()
        say(f"   {request.method} https://api.dub.co{request.path}")
        say("   Authorization: Bearer $DUB_API_KEY")
        say(f"   Idempotency-Key: {delivery.event.event_id}")
        say("   " + json.dumps(request.json, indent=2).replace("\n", "\n   "))
    say("Done: no account and no network were used. See README.md to send it for real.")
    return 0 if credited else 1
