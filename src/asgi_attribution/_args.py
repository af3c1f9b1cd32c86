"""The per-call fields of ``track_*``, declared once (PostHog's ``args.py`` is the model).

The :class:`~asgi_attribution.Tracker` methods and the request helpers take these with
``Unpack``, so the list exists once and type checkers still check every call. ``None`` means
"not given" for every field.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import Required, TypedDict

__all__ = [
    "CallOptions",
    "CustomerFields",
    "CustomerIdentity",
    "LeadFields",
    "LeadOptions",
    "SaleFields",
]


class CallOptions(TypedDict, total=False):
    """How the call is made, not what it says.

    ``within``: an open transaction (a psycopg ``AsyncConnection``, or a SQLAlchemy
    ``AsyncConnection`` / ``AsyncSession``) that the event joins, with a PostgreSQL outbox:
    your commit stores it, your rollback discards it.
    """

    within: object | None


class CustomerIdentity(CallOptions, total=False):
    """Who the customer is: their id in your system, and what the provider shows of them.

    ``external_id`` and ``customer_id`` are legacy names of ``customer_external_id``.
    """

    customer_external_id: str | None
    customer_name: str | None
    customer_email: str | None
    customer_avatar: str | None
    external_id: str | None
    customer_id: str | None


class LeadOptions(TypedDict, total=False):
    """The options of a lead other than the customer (also :func:`tracks_lead`'s options)."""

    event_quantity: int | None
    mode: str | None
    metadata: dict[str, Any] | None


class LeadFields(CustomerIdentity, LeadOptions, total=False):
    """Everything a lead takes besides its click id and event name."""


class SaleFields(CustomerIdentity, total=False):
    """A sale's fields besides the click id; ``amount`` (integer cents) is required."""

    amount: Required[int]
    currency: str | None
    event_name: str | None
    payment_processor: str | None
    invoice_id: str | None
    lead_event_name: str | None
    metadata: dict[str, Any] | None


#: A customer update takes exactly the identity fields (``customer_id`` first among its names).
CustomerFields = CustomerIdentity
