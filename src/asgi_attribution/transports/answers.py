"""What a provider's HTTP answer means: a delivery (with its outcome) or an error of the right kind.

One place reads answers for every HTTP engine (httpx, or the lean engine), from a neutral
:class:`Answer`: 2xx is delivered, with what the body says the provider did; 408, 425, 429 and
5xx are retryable with the server's ``Retry-After``; 401, 403, 3xx and a 404 or 405 naming no
event are faults of the whole integration; other 4xx are final for the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._exceptions import DeliveryError, IntegrationError
from ..jsoncodec import loads
from ..providers import Outcome
from .base import Delivery, TrackResult
from .faults import per_event_not_found
from .retry import parse_retry_after

__all__ = ["RETRYABLE_STATUS", "Answer", "delivered", "error_from", "parse_json", "sent"]

# Retryable below 500; every 5xx is retryable too.
RETRYABLE_STATUS = frozenset({408, 425, 429})
logger = logging.getLogger("asgi_attribution")


def parse_json(body: bytes) -> Any:
    """The body as JSON, or ``None`` when it is empty or not JSON.

    Example:
        >>> parse_json(b'{"ok": true}'), parse_json(b"<html>")
        ({'ok': True}, None)
    """
    try:
        return loads(body) if body else None
    except ValueError:  # not UTF-8 either
        return None


# Not frozen: a frozen dataclass's __init__ costs an object.__setattr__ per field (bench/README.md).
@dataclass(slots=True)
class Answer:
    """One HTTP answer, as much of it as deciding what it means needs.

    Example:
        >>> Answer(503, None, "Service Unavailable", "POST /track/lead", retry_after="2").status
        503
    """

    status: int
    body: Any
    reason: str
    target: str
    location: str | None = None
    retry_after: str | None = None


def delivered(delivery: Delivery, answer: Answer) -> TrackResult:
    """The result of a 2xx, with what the answer says the provider did (and warnings).

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> delivered(Delivery(lead, DUB), Answer(200, {"link": None}, "OK", "POST /")).outcome
        'duplicate'
    """
    event = delivery.event
    outcome, reason = delivery.provider.outcome(event, answer.body)
    if reason == "not_json":
        logger.warning(
            "event %s: %s answered HTTP %d with a body that is not JSON (a proxy?): "
            "counted as sent, but whether it was recorded is unknown",
            event.event_id,
            delivery.provider.name,
            answer.status,
            extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
        )
    elif outcome == "not_recorded" and event.kind == "sale":
        logger.warning(
            "sale %s not recorded by %s: %s",
            event.event_id,
            delivery.provider.name,
            reason,
            extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
        )
    return sent(delivery, answer, outcome, reason)


def sent(delivery: Delivery, answer: Answer, outcome: Outcome, reason: str | None) -> TrackResult:
    """The result of a delivery the provider answered, with what it says it did.

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> sent(Delivery(lead, DUB), Answer(200, {}, "OK", "POST /"), "recorded", None).status
        'sent'
    """
    return TrackResult(
        "sent",
        delivery.event,
        status_code=answer.status,
        response=answer.body,
        outcome=outcome,
        outcome_reason=reason,
    )


def error_from(event_id: str, answer: Answer) -> DeliveryError:
    """The error a non-2xx ``answer`` is for ``event_id``.

    Example:
        >>> error_from("evt_1", Answer(401, None, "Unauthorized", "POST /track/lead")).code
        'unauthorized'
    """
    status, body = answer.status, answer.body
    code, message = f"http_{status}", answer.reason or "error"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))[:100]
        message = str(body["error"].get("message", message))[:500]
    integration = _integration_code(answer)
    if integration is not None:
        code, hint = integration
        return IntegrationError(event_id, code, f"{message} ({hint})", status_code=status)
    if status == 404:
        code = per_event_not_found(body) or code
    retryable = status in RETRYABLE_STATUS or status >= 500
    retry_after = parse_retry_after(answer.retry_after) if retryable else None
    return DeliveryError(
        event_id, code, message, status_code=status, retryable=retryable, retry_after=retry_after
    )


def _integration_code(answer: Answer) -> tuple[str, str] | None:
    """(code, hint) for an answer that is a fault of the whole integration, else None."""
    status = answer.status
    if status == 401:
        return "unauthorized", "check the API key"
    if status == 403:
        return "forbidden", "the API key lacks the permission for this call"
    if 300 <= status < 400:
        return "redirect", f"redirected to {answer.location or '?'}: check base_url"
    if status == 405 or (status == 404 and per_event_not_found(answer.body) is None):
        return "wrong_path", f"{answer.target}: check base_url"
    return None
