"""The delivery engine: a small HTTP/1.1 client on ``asyncio.Protocol`` for provider requests.

Made for what delivery does: one JSON request per call to one origin, over a bounded pool of
keep-alive connections, with precomputed header bytes, a single write per request, a single
timer per attempt and responses parsed by ``httptools``. It verifies TLS certificates and
SNI as httpx does. It does not speak to proxies: when :func:`proxies_configured` is True,
delivery goes through httpx instead.

Example:
    >>> engine = Engine("http://127.0.0.1:8000/api", concurrency=20, timeout=5.0)
    >>> engine.prefix, engine.concurrency, proxies_configured({})
    ('/api', 20, False)
"""

from .connection import Limits, Response
from .errors import (
    AttemptTimeout,
    ConnectError,
    ConnectionClosed,
    EngineError,
    NetworkError,
    ProtocolError,
    ResponseTooLarge,
)
from .pool import Engine
from .tls import default_ssl_context, proxies_configured

__all__ = [
    "AttemptTimeout",
    "ConnectError",
    "ConnectionClosed",
    "Engine",
    "EngineError",
    "Limits",
    "NetworkError",
    "ProtocolError",
    "Response",
    "ResponseTooLarge",
    "default_ssl_context",
    "proxies_configured",
]
