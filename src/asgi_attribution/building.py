"""From the arguments of a ``track_*`` call to one validated event, before anything is queued.

The customer's external id is taken from any of its names; optional fields a visitor typed
(name, email, avatar) that break a limit are dropped with a warning instead of costing the
lead; the provider's own limits are checked by rendering its request, once: the delivery keeps it.
"""

from __future__ import annotations

import logging
from typing import Any

from ._exceptions import InvalidEventError
from .events import VISITOR_FIELDS, validate_fields
from .providers import Provider
from .transports.base import Delivery

__all__ = ["build_event"]

logger = logging.getLogger("asgi_attribution")

# The names a customer's external id goes by (current first), per event kind's own field.
_EXTERNAL_ID_NAMES = ("customer_external_id", "external_id", "customer_id")
_OTHER_NAMES = {name: frozenset(_EXTERNAL_ID_NAMES) - {name} for name in _EXTERNAL_ID_NAMES}


def _external_id(kind: str, fields: dict[str, Any], target: str) -> None:
    """Move the customer's external id from any of its names to ``target``; they must agree."""
    if target in fields and _OTHER_NAMES[target].isdisjoint(fields):
        return  # the current name alone (nearly always): nothing to move or compare
    names = [name for name in _EXTERNAL_ID_NAMES if name in fields]
    if len(names) == 1:  # one name given: nothing to compare
        fields[target] = fields.pop(names[0])
        return
    given = {name: fields.pop(name) for name in names if fields.get(name) is not None}
    if len(set(given.values())) > 1:
        both = " and ".join(given)
        raise InvalidEventError(kind, [(both, "give the customer's external id once")])
    fields[target] = next(iter(given.values()), None)


def build_event(
    provider: Provider, kind: str, fields: dict[str, Any], id_field: str, **more: Any
) -> tuple[Delivery, tuple[str, ...]]:
    """The validated event of ``kind``, checked against what ``provider`` takes, and the
    warnings of optional fields dropped on the way.

    ``fields`` are the call's keyword arguments (changed in place); ``id_field`` is where the
    event keeps the customer's external id. Raises :class:`InvalidEventError` for a required
    field.

    Example:
        >>> delivery, warnings = build_event(DUB, "lead", {"customer_external_id": "u1",
        ...     "customer_name": "x" * 101}, "customer_external_id",
        ...     click_id="c1", event_name="Sign up")
        >>> delivery.event.customer_name, warnings
        (None, ('customer_name: must be at most 100 characters (got 101)',))
        >>> delivery.request().json["customerExternalId"]
        'u1'
    """
    _external_id(kind, fields, id_field)
    fields.update(more)
    warnings: tuple[str, ...] = ()
    try:
        event = validate_fields(kind, fields)
    except InvalidEventError as exc:
        # What a visitor typed (a long name, an IDN email) must not cost the lead: the event
        # goes without those fields. A required field still raises.
        if not exc.errors or not set(exc.fields) <= VISITOR_FIELDS:
            raise
        warnings = tuple(f"{name}: {reason}" for name, reason in exc.errors)
        for name in exc.fields:
            fields.pop(name, None)
        event = validate_fields(kind, fields)
        logger.warning(
            "%s %s sent without what broke a limit: %s",
            kind,
            event.event_id,
            "; ".join(warnings),
            extra={"event_id": event.event_id},
        )
    # What the provider refuses, refused before anything is queued. The request itself is
    # rendered by the first attempt: off the handler's path, and never for an outbox row.
    provider.check(event)
    return Delivery(event, provider), warnings
