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

from ._exceptions import (
    AttributionError,
    DeliveryError,
    IntegrationError,
    InvalidEventError,
    MissingClickIdError,
    OutboxError,
    QueueFullError,
)
from .attribution import Attribution, Discount, Partner, PartnerData, get_attribution
from .clearing import clear_attribution
from .cookies import CookiePolicy, valid_click_id
from .events import CustomerEvent, Event, LeadEvent, SaleEvent
from .middleware import AttributionMiddleware
from .pending import Tracking
from .providers import DUB, PIMMS, Provider, ProviderRequest, get_provider
from .tracker import Tracker
from .tracking import track_customer, track_lead, track_sale, tracks_lead
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

__version__ = "0.1.0"

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
    "TrackResult",
    "Tracker",
    "Tracking",
    "Transport",
    "__version__",
    "clear_attribution",
    "get_attribution",
    "get_provider",
    "track_customer",
    "track_lead",
    "track_sale",
    "tracks_lead",
    "valid_click_id",
]
