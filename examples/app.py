"""Acme: a small FastAPI site that credits signups to the Dub (or PIMMS) link that brought them.

Run it:    uvicorn examples.app:app --reload        (DUB_API_KEY=... to send leads for real)
Try it:    open http://127.0.0.1:8000/?dub_id=cm3demo123 then sign up.
Partners:  open http://127.0.0.1:8000/?via=john (a Dub partner link on the site itself).

The two lines that matter are marked (1) and (2); everything else is an ordinary site: a landing
page, a pricing page, a signup form validated on the server, and a welcome page that shows (for
the demo only) which click the signup was credited to.

Partner links (``?via=john``) carry no click id. With ``refer_domain`` (your Dub short-link
domain: ``DUB_REFER_DOMAIN``, ``go.acme.com`` here) the middleware asks the provider for the
click from the server (``POST /track/click``) on the landing itself, sets the ``dub_id`` and
``dub_partner_data`` cookies, and every page from that landing on shows the partner's banner
(``get_attribution(request).partner`` and ``.discount``). Dub's browser script is still included,
as a real site has it; nothing here depends on it, so an ad blocker that stops it loses nothing.
"""

from __future__ import annotations

import html
import itertools
import os
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from asgi_attribution import AttributionMiddleware, Tracker, get_attribution, track_lead

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
#: Your Dub short-link domain: the ``domain`` of the partner links (``go.acme.com/john``).
REFER_DOMAIN = os.environ.get("DUB_REFER_DOMAIN", "go.acme.com")
#: Dub's browser script, included as a real site includes it. The server does its work for
#: ``?via=`` links, so a blocked script changes nothing.
DUB_SCRIPT = "https://www.dubcdn.com/analytics/script.js"
STATUS_TEXT = {
    "queued": "queued for delivery",
    "sent": "sent",
    "skipped": "not sent",
}


def create_app(tracker: Tracker | None = None, **middleware_options: Any) -> FastAPI:
    """Build the site.

    ``tracker`` defaults to a ``Tracker`` for ``middleware_options["provider"]`` (Dub unless
    given), with its API key from ``DUB_API_KEY`` / ``PIMMS_API_KEY``. Other keyword options go
    to ``AttributionMiddleware`` (for example ``attribution_model="first-click"``);
    ``refer_domain`` defaults to :data:`REFER_DOMAIN` (``refer_domain=None``: no partner clicks),
    and the ``/track/click`` call goes to the tracker's ``base_url``, like every other call.
    """
    if tracker is None:
        tracker = Tracker(middleware_options.get("provider") or "dub")
    middleware_options.setdefault("refer_domain", REFER_DOMAIN)
    app = FastAPI(title="Acme")
    # (1) Read the click cookie on every request; set it from ?dub_id= on a landing, and from
    # the provider's /track/click on a ?via= partner landing (within click_timeout).
    app.add_middleware(AttributionMiddleware, tracker=tracker, **middleware_options)
    refer_domain = middleware_options["refer_domain"]
    app.state.head_html = (
        provider_script(refer_domain) if tracker.provider.name == "dub" and refer_domain else ""
    )
    users: dict[str, dict[str, Any]] = {}
    ids = itertools.count(1)

    @app.get("/", response_class=HTMLResponse)
    async def landing(request: Request) -> str:
        return page(
            request,
            "Ship faster with Acme",
            '<p class="lead">Acme turns your backlog into releases. '
            "Plan, build and ship in one place: teams of every size trust it.</p>"
            '<ul class="features"><li><b>Plan</b> in minutes, not meetings.</li>'
            "<li><b>Ship</b> with one click, roll back with another.</li>"
            "<li><b>Learn</b> what your users actually do.</li></ul>"
            '<p><a class="button" href="/pricing">See pricing</a></p>',
        )

    @app.get("/pricing", response_class=HTMLResponse)
    async def pricing(request: Request) -> str:
        return page(
            request,
            "Pricing",
            '<div class="plans">'
            '<div class="plan"><h2>Starter</h2><p class="price">Free</p><p>Up to 3 seats.</p></div>'
            '<div class="plan"><h2>Team</h2><p class="price">$12</p>'
            "<p>Per seat per month.</p></div></div>"
            '<p><a class="button" href="/signup">Start free</a></p>',
        )

    @app.get("/signup", response_class=HTMLResponse)
    async def signup_form(request: Request) -> str:
        return page(request, "Create your account", signup_form_html())

    @app.post("/signup", response_model=None)
    async def signup(request: Request) -> HTMLResponse | RedirectResponse:
        form = await request.form()
        name = str(form.get("name", "")).strip()
        email = str(form.get("email", "")).strip()
        errors = []
        if not 1 <= len(name) <= 100:
            errors.append("Please enter your name (at most 100 characters).")
        if len(email) > 100 or not EMAIL.match(email):
            errors.append("Please enter a valid email address.")
        if errors:
            body = "".join(f'<p class="error" role="alert">{html.escape(e)}</p>' for e in errors)
            return HTMLResponse(
                page(request, "Create your account", body + signup_form_html(name, email)),
                status_code=422,
            )
        user_id = f"user_{next(ids)}"
        # (2) Credit the signup to the click; an organic visitor is simply skipped.
        result = await track_lead(
            request,
            "Sign up",
            customer_external_id=user_id,
            customer_name=name,
            customer_email=email,
        )
        users[user_id] = {
            "name": name,
            "click_id": get_attribution(request).click_id,
            "status": result.status,
        }
        return RedirectResponse(f"/welcome/{user_id}", status_code=303)

    @app.get("/welcome/{user_id}", response_class=HTMLResponse)
    async def welcome(request: Request, user_id: str) -> HTMLResponse:
        user = users.get(user_id)
        if user is None:
            return HTMLResponse(page(request, "Not found", "<p>No such account.</p>"), 404)
        status = STATUS_TEXT.get(user["status"], user["status"])
        credit = (
            f'credited to click <code id="credited">{html.escape(user["click_id"])}</code> '
            f"(lead {html.escape(status)})"
            if user["click_id"]
            else '<span id="credited">not credited to any click (organic visit)</span>'
        )
        body = f"<p>Thanks, {html.escape(user['name'])}! Your account is ready.</p>"
        body += (
            '<p class="note">Shown for the demo only; a real site would not show this: '
            f"your signup was {credit}.</p>"
        )
        return HTMLResponse(page(request, "Welcome aboard", body))

    return app


def signup_form_html(name: str = "", email: str = "") -> str:
    return (
        '<form method="post" action="/signup" class="card">'
        f'<label>Name <input name="name" value="{html.escape(name)}" autocomplete="name" '
        "required></label>"
        f'<label>Email <input name="email" type="email" value="{html.escape(email)}" '
        'autocomplete="email" required></label>'
        '<button type="submit">Create account</button></form>'
    )


def provider_script(refer_domain: str) -> str:
    """Dub's browser script tag, as Dub's docs have it for partner links on ``refer_domain``."""
    domains = html.escape(f'{{"refer": "{refer_domain}"}}')
    return f'<script src="{DUB_SCRIPT}" defer data-domains="{domains}"></script>\n'


def banner(request: Request) -> str:
    """The partner banner, when a partner referred: from the ``dub_partner_data`` cookie, or
    on a ``?via=`` landing from the provider's answer (``get_attribution`` has it either way)."""
    attribution = get_attribution(request)
    partner, discount = attribution.partner, attribution.discount
    if partner is None or not partner.name:
        return ""
    offer = ""
    if discount is not None and discount.amount:
        if discount.type == "percentage":
            offer = f": {discount.amount:g}% off"
        else:  # Dub's flat discounts are in cents
            offer = f": ${discount.amount / 100:.2f} off"
    return f'<div class="banner">{html.escape(partner.name)} referred you{html.escape(offer)}</div>'


def page(request: Request, title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · Acme</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{getattr(request.app.state, "head_html", "")}<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 0 auto;
        padding: 0 1rem 2rem; color: #1f2933; }}
 nav {{ display: flex; gap: 1.5rem; align-items: baseline; padding: 1rem 0;
       border-bottom: 1px solid #e5e7eb; margin-bottom: 1.5rem; }}
 nav a {{ color: #374151; text-decoration: none; }}
 nav a.brand {{ font-weight: 700; font-size: 1.2rem; color: #2563eb; margin-right: auto; }}
 .banner {{ background: #fff4d6; border: 1px solid #f0c36d; padding: .5rem 1rem;
           border-radius: 6px; margin-bottom: 1rem; }}
 .lead {{ font-size: 1.15rem; }}
 .button, button {{ display: inline-block; background: #2563eb; color: white; font: inherit;
                   padding: .5rem 1.2rem; border: 0; border-radius: 6px;
                   text-decoration: none; cursor: pointer; }}
 .plans {{ display: flex; gap: 1rem; flex-wrap: wrap; }}
 .plan, .card {{ border: 1px solid #e5e7eb; border-radius: 8px; padding: 1rem 1.5rem; }}
 .plan {{ flex: 1; min-width: 12rem; }} .plan h2 {{ margin: 0; font-size: 1.1rem; }}
 .price {{ font-size: 1.8rem; font-weight: 700; margin: .25rem 0; }}
 label {{ display: block; margin: .5rem 0 1rem; }}
 input {{ display: block; padding: .4rem; width: 100%; max-width: 20rem; font: inherit; }}
 .error {{ color: #b91c1c; }} .note {{ color: #6b7280; font-size: .9rem; }}
</style></head>
<body><nav><a class="brand" href="/">Acme</a><a href="/pricing">Pricing</a>
<a href="/signup">Sign up</a></nav>
{banner(request)}<h1>{html.escape(title)}</h1>
{body}
</body></html>"""


app = create_app()
