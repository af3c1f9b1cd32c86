"""What can go wrong in one request of the engine, as a small tree.

```
EngineError             any failure of one request (``retryable`` says if trying again can help)
 ├── NetworkError       the exchange did not complete: retryable
 │    ├── ConnectError      the connection (TCP or the TLS handshake) could not be made
 │    ├── AttemptTimeout    the attempt's one timer fired (connect, send and response together)
 │    └── ConnectionClosed  the server closed or reset the connection before the response ended
 └── ProtocolError      the server answered something that is not a valid HTTP/1.1 response
      └── ResponseTooLarge  headers or body over the engine's limits
```

A transport maps every one of them to ``DeliveryError(retryable=error.retryable)``: network
errors are transient by nature, and a protocol error is treated as httpx treats one (a
``TransportError``, retried with the same ``Idempotency-Key``) because a garbled answer from a
proxy or a restarting server says nothing about the event itself.

Example:
    >>> issubclass(AttemptTimeout, NetworkError), ConnectionClosed("reset").retryable
    (True, True)
    >>> ResponseTooLarge("body over 1048576 bytes").retryable
    True
"""

from __future__ import annotations

__all__ = [
    "AttemptTimeout",
    "ConnectError",
    "ConnectionClosed",
    "EngineError",
    "NetworkError",
    "ProtocolError",
    "ResponseTooLarge",
]


class EngineError(Exception):
    """Base class of the engine's errors; ``retryable`` says whether another attempt can help.

    Example:
        >>> isinstance(ConnectError("refused"), EngineError)
        True
    """

    retryable: bool = True


class NetworkError(EngineError):
    """The request/response exchange did not complete (raised as one of the subclasses).

    Example:
        >>> NetworkError("x").retryable
        True
    """


class ConnectError(NetworkError):
    """Raised when the TCP connection or the TLS handshake (certificate, SNI) fails.

    Example:
        >>> str(ConnectError("connection refused"))
        'connection refused'
    """


class AttemptTimeout(NetworkError):
    """Raised when an attempt outlives its timeout; the connection is closed.

    Example:
        >>> AttemptTimeout("no response within 10.0 s").retryable
        True
    """


class ConnectionClosed(NetworkError):
    """Raised when the server closes or resets the connection before the response is complete.

    Example:
        >>> ConnectionClosed("closed after 0 bytes").retryable
        True
    """


class ProtocolError(EngineError):
    """Raised when the response is not valid HTTP/1.1 (or asks for an upgrade).

    Example:
        >>> ProtocolError("invalid status line").retryable
        True
    """


class ResponseTooLarge(ProtocolError):
    """Raised when the response's headers or body exceed the engine's limits.

    Example:
        >>> isinstance(ResponseTooLarge("too many headers"), ProtocolError)
        True
    """
