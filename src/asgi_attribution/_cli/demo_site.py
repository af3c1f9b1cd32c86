"""The demo's own tiny site, shipped in the package: a landing, a pricing page, a signup.

A Starlette app with :class:`~asgi_attribution.AttributionMiddleware`; the signup credits the
lead to the click with :func:`~asgi_attribution.track_lead`. With no tracker given, leads go to
a :class:`~asgi_attribution.MemoryTransport` (nothing leaves the process). The richer example
site, with a partner banner and form validation, is ``examples/app.py`` in the repository.

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
import itertools
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

# The public API, as a user's site imports it (and whichever module each name lives in).
from .. import AttributionMiddleware, MemoryTransport, Tracker, get_attribution, track_lead

__all__ = ["create_app"]


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
