"""asgi-attribution: credit signups and sales to the link click that brought the visitor.

Example:
    >>> from fastapi import FastAPI, Request
    >>> from asgi_attribution import AttributionMiddleware, Tracker, track_lead
    >>> app = FastAPI()
    >>> app.add_middleware(AttributionMiddleware, tracker=Tracker("dub"))
    >>> @app.post("/signup")
    ... async def signup(request: Request):
    ...     await track_lead(request, "Sign up", customer_external_id="user_42")
"""

from __future__ import annotations

from importlib import metadata as _metadata

from ._attribution import (
    Attribution,
    Discount,
    Partner,
    PartnerData,
    Touch,
    attribution_state,
    get_attribution,
    restore_attribution,
)
from ._clearing import clear_attribution
from ._cookies import CookiePolicy, valid_click_id
from ._events import CustomerEvent, Event, LeadEvent, SaleEvent
from ._exceptions import (
    AttributionError,
    DeliveryError,
    IntegrationError,
    InvalidEventError,
    InvalidSignatureError,
    InvalidWebhookError,
    MissingClickIdError,
    OutboxError,
    QueueFullError,
)
from ._middleware import AttributionMiddleware
from ._providers import DUB, PIMMS, Provider, ProviderRequest, get_provider
from ._tracker import Tracker, Tracking
from ._tracking import track_customer, track_lead, track_sale, tracks_lead
from .transports import (
    BackgroundTransport,
    Delivery,
    DeliveryRecord,
    DeliveryStats,
    HTTPTransport,
    MemoryTransport,
    OutboxRow,
    OutboxStatus,
    OutboxStore,
    OutboxTransport,
    PostgresOutbox,
    RedisOutbox,
    RetryPolicy,
    SQLiteOutbox,
    TrackResult,
    Transport,
)

__all__ = [
    "DUB",
    "PIMMS",
    "Attribution",
    "AttributionError",
    "AttributionMiddleware",
    "BackgroundTransport",
    "CookiePolicy",
    "CustomerEvent",
    "Delivery",
    "DeliveryError",
    "DeliveryRecord",
    "DeliveryStats",
    "Discount",
    "Event",
    "HTTPTransport",
    "IntegrationError",
    "InvalidEventError",
    "InvalidSignatureError",
    "InvalidWebhookError",
    "LeadEvent",
    "MemoryTransport",
    "MissingClickIdError",
    "OutboxError",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "Partner",
    "PartnerData",
    "PostgresOutbox",
    "Provider",
    "ProviderRequest",
    "QueueFullError",
    "RedisOutbox",
    "RetryPolicy",
    "SQLiteOutbox",
    "SaleEvent",
    "Touch",
    "TrackResult",
    "Tracker",
    "Tracking",
    "Transport",
    "__version__",
    "attribution_state",
    "clear_attribution",
    "get_attribution",
    "get_provider",
    "restore_attribution",
    "track_customer",
    "track_lead",
    "track_sale",
    "tracks_lead",
    "valid_click_id",
]

try:
    # The version is written once, in pyproject.toml; the installed metadata carries it.
    __version__ = _metadata.version("asgi-attribution")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
