"""Every option is checked at construction, with a message naming the option and the value."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette

from asgi_attribution import AttributionMiddleware, MemoryTransport, RetryPolicy, Tracker


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"timeout": "10"}, TypeError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"retry": 5}, TypeError, "retry"),
        ({"on_error": "print"}, TypeError, "on_error"),
        ({"on_drop": 3}, TypeError, "on_drop"),
        ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
        ({"concurrency": 2.5}, TypeError, "concurrency"),
        ({"queue_size": 0}, ValueError, "queue_size"),
        ({"inline_timeout": -1}, ValueError, "inline_timeout"),
        ({"background": "yes"}, TypeError, "background"),
        ({"require_click_id": 1}, TypeError, "require_click_id"),
        ({"base_url": "api.dub.co"}, ValueError, "base_url"),
        ({"transport": "memory"}, TypeError, "transport"),
        ({"transport": MemoryTransport(), "retry": RetryPolicy()}, TypeError, "retry"),
        (
            {"outbox": "events.db", "outbox_fallback": None, "queue_size": 5},
            TypeError,
            "queue_size",
        ),
        ({"outbox": "events.db", "outbox_fallback": None, "on_drop": print}, TypeError, "on_drop"),
        ({"outbox": "events.db", "background": False}, TypeError, "background"),
        ({"background": False, "on_error": print}, TypeError, "on_error"),
        ({"background": False, "queue_size": 5}, TypeError, "queue_size"),
        ({"deliver": False}, TypeError, "deliver"),
        ({"append_timeout": 1.0}, TypeError, "append_timeout"),
        ({"outbox_fallback": None}, TypeError, "outbox_fallback"),
        ({"outbox": "events.db", "outbox_fallback": "disk"}, ValueError, "outbox_fallback"),
        ({"background": False, "pause_interval": 5.0}, TypeError, "pause_interval"),
        ({"background": False, "on_delivered": print}, TypeError, "on_delivered"),
        ({"on_delivered": "log"}, TypeError, "on_delivered"),
        ({"pause_interval": 0}, ValueError, "pause_interval"),
    ],
)
def test_tracker_refuses_bad_options(options: dict[str, Any], error: type, names: str) -> None:
    with pytest.raises(error, match=rf"Tracker\(.*{names}"):
        Tracker("dub", **options)


def test_tracker_names_both_options_when_one_would_be_ignored() -> None:
    with pytest.raises(TypeError) as caught:
        Tracker("dub", outbox="events.db", outbox_fallback=None, queue_size=5)
    assert "outbox_fallback=None" in str(caught.value) and "queue_size=" in str(caught.value)


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown provider 'dubb'"):
        Tracker("dubb")


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"consent": True}, TypeError, "consent"),
        ({"cookie_max_age": 0}, ValueError, "cookie_max_age"),
        ({"cookie_max_age": "90d"}, TypeError, "cookie_max_age"),
        ({"cookie_secure": "auto"}, TypeError, "cookie_secure"),
        ({"capture_landing": "no"}, TypeError, "capture_landing"),
        ({"honor_gpc": "yes"}, TypeError, "honor_gpc"),
        ({"forwarded_host": 1}, TypeError, "forwarded_host"),
        ({"tracker": "dub"}, TypeError, "tracker"),
        ({"attribution_model": "linear"}, ValueError, "attribution_model"),
        ({"cookie_samesite": "loose"}, ValueError, "samesite"),
        ({"verified_max_age": 0, "signing_secrets": "s" * 32}, ValueError, "verified_max_age"),
    ],
)
def test_middleware_refuses_bad_options(options: dict[str, Any], error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        AttributionMiddleware(Starlette(), **options)


def test_a_provider_that_disagrees_with_the_tracker_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match its tracker's provider 'dub'"):
        AttributionMiddleware(
            Starlette(), provider="pimms", tracker=Tracker("dub", transport=MemoryTransport())
        )


def test_an_api_key_is_accepted_beside_a_transport_and_stays_available() -> None:
    # An app factory passes its key whatever the transport (a MemoryTransport in tests).
    tracker = Tracker("dub", api_key="dub_factory", transport=MemoryTransport())
    assert tracker.api_key is not None and tracker.api_key.get_secret_value() == "dub_factory"
    assert "dub_factory" not in repr(tracker)
    with pytest.raises(TypeError, match=r"Tracker\(transport=\.\.\.\) ignores base_url="):
        Tracker("dub", base_url="https://api.dub.co", transport=MemoryTransport())
