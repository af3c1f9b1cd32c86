"""Faults of the whole integration, told apart from answers about one event.

A revoked key (401), a key without the right (403), a wrong ``base_url`` (a 404 that names no
event, a 405) or a moved API (3xx) say nothing about the event that met them: every event would
meet them. They are raised as :class:`IntegrationError` (a :class:`DeliveryError` with
``integration=True``, never retryable by the per-event retry step), and the background queue
pauses on them instead of discarding events. Per-event answers (400, 409, 422, a 404 "click not
found") stay final failures of their event.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["is_integration_fault", "per_event_not_found"]

# A 404 about the event names what was not found: Dub's "Click event not found for clickId: x",
# "Lead event not found for externalId: ...", "Customer ext_u not found." A wrong path gives
# HTML, a generic "Not Found", or names the route ("POST /track/lead not found").
_ENTITY_NOT_FOUND = re.compile(
    r"^\s*(click|lead|sale|customer|link|partner|commission)\b[^/]*\bnot found", re.IGNORECASE
)


def is_integration_fault(error: BaseException) -> bool:
    """True for an error of the whole integration (anything with a true ``integration`` flag).

    Example:
        >>> is_integration_fault(IntegrationError("evt_1", "forbidden", "no", status_code=403))
        True
        >>> is_integration_fault(DeliveryError("evt_1", "bad_request", "no", status_code=400))
        False
    """
    return getattr(error, "integration", False) is True


def per_event_not_found(body: Any) -> str | None:
    """The code of a 404 whose JSON error names the event's click, customer or lead, else None.

    Example:
        >>> per_event_not_found(
        ...     {"error": {"code": "not_found", "message": "Click event not found for clickId: c"}})
        'click_not_found'
        >>> per_event_not_found({"error": {"code": "not_found", "message": "Customer u not found"}})
        'not_found'
        >>> per_event_not_found({"error": {"code": "not_found", "message": "POST /x not found"}})
        >>> per_event_not_found("<html>Not Found</html>") is None
        True
    """
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    message = body["error"].get("message")
    if not isinstance(message, str):
        return None
    match = _ENTITY_NOT_FOUND.match(message)
    if match is None:
        return None
    if match.group(1).lower() == "click":
        return "click_not_found"
    return str(body["error"].get("code") or "not_found")[:100]
