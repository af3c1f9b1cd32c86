"""A Flask app and a Django WSGI app, each following its recipe in docs/frameworks.md (WSGI).

Each answers ``GET /`` with the request's attribution (``get_attribution(request)``) and
``POST /signup?u=<id>`` with ``{"status", "event_id"}`` of ``sync.track_lead(request, ...)``.
The factories take a tracker, or build one from the environment (how gunicorn runs them in its
workers): ``FAKE_PROVIDER_URL``, ``WSGI_OUTBOX`` (a SQLite outbox path), ``WSGI_SHUTDOWN``
(``shutdown_timeout``). Events the tracker gives up on are printed by id (``on_drop``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from flask import Flask, request

from asgi_attribution import Delivery, RetryPolicy, Tracker, get_attribution, sync
from asgi_attribution.wsgi import AttributionMiddleware

KEY = "dub_test_key"
SECRET = "a-long-random-signing-secret"


def on_drop(delivery: Delivery, reason: str) -> None:
    print(f"ON_DROP {delivery.event.event_id} {reason}", file=sys.stderr, flush=True)


def env_tracker() -> Tracker:
    """A tracker for the fake provider at ``FAKE_PROVIDER_URL``, from the environment."""
    options: dict[str, Any] = {}
    if os.environ.get("WSGI_OUTBOX"):
        options["outbox"] = os.environ["WSGI_OUTBOX"]
    else:
        options["on_drop"] = on_drop
    if os.environ.get("WSGI_SHUTDOWN"):
        options["shutdown_timeout"] = float(os.environ["WSGI_SHUTDOWN"])
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=os.environ["FAKE_PROVIDER_URL"],
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.2),
        **options,
    )
    if "outbox" in options:
        # A killed worker's claims come back after their lease (60 s by default): the test of a
        # SIGKILL waits for them, so a short one keeps it short.
        tracker.transport.lease = 5.0  # type: ignore[attr-defined]
    return tracker


def answer(attribution: Any) -> dict[str, Any]:
    return {
        "click_id": attribution.click_id,
        "verified": attribution.verified,
        "partner": attribution.partner.name if attribution.partner else None,
    }


def flask_app(tracker: Tracker | None = None, **options: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def home() -> Any:
        return answer(get_attribution(request))

    @app.post("/signup")
    def signup() -> Any:
        result = sync.track_lead(request, "Sign up", customer_external_id=request.args["u"])
        event = result.event
        return {"status": result.status, "event_id": event.event_id if event else None}

    app.wsgi_app = AttributionMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, tracker=tracker or env_tracker(), **options
    )
    return app


# -- Django: AttributionMiddleware(get_wsgi_application()) ---------------------------------------


def django_home(request: HttpRequest) -> HttpResponse:
    return JsonResponse(answer(get_attribution(request)))


def django_signup(request: HttpRequest) -> HttpResponse:
    result = sync.track_lead(request, "Sign up", customer_external_id=request.GET["u"])
    event = result.event
    return JsonResponse({"status": result.status, "event_id": event.event_id if event else None})


urlpatterns = [path("", django_home), path("signup", django_signup)]


def configure_django() -> None:
    """Django's settings, once per process (a test run may have configured them already)."""
    if not settings.configured:
        settings.configure(
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="not-a-secret",
            USE_TZ=True,
            MIDDLEWARE=[],
        )
        django.setup()


def django_wsgi(tracker: Tracker | None = None, **options: Any) -> Any:
    configure_django()
    from django.core.wsgi import get_wsgi_application

    return AttributionMiddleware(get_wsgi_application(), tracker or env_tracker(), **options)
