"""The errors this package raises, all subclasses of :class:`AttributionError`.

The hierarchy (each class says in one line when it is raised)::

    AttributionError                      base class of every error of this package
    ├── InvalidEventError (ValueError)    an event field breaks a provider limit; nothing was sent
    │   └── MissingClickIdError           a lead without a click id, with ``require_click_id=True``
    ├── DeliveryError                     the provider refused an event, or could not be reached
    │   ├── IntegrationError              a fault of the whole integration (401, 403, wrong path)
    │   └── QueueFullError                the background queue stayed full (``when_full="raise"``)
    ├── OutboxError                       an outbox store cannot be used (path, file, server)
    ├── InvalidSignatureError             a webhook's signature is missing or matches no secret
    └── InvalidWebhookError (ValueError)  a signed webhook whose body is not one (not JSON, no id)

The two webhook errors are also importable from :mod:`asgi_attribution.webhooks`, which raises
them.

This module imports nothing from the package, so every module may import it.
"""

from __future__ import annotations

__all__ = [
    "AttributionError",
    "DeliveryError",
    "IntegrationError",
    "InvalidEventError",
    "InvalidSignatureError",
    "InvalidWebhookError",
    "MissingClickIdError",
    "OutboxError",
    "QueueFullError",
]


class AttributionError(Exception):
    """Base class of every error this package raises.

    Example:
        >>> try:
        ...     raise InvalidEventError("lead", [("event_name", "at least 1 character")])
        ... except AttributionError as exc:
        ...     print(type(exc).__name__)
        InvalidEventError
    """


class InvalidEventError(AttributionError, ValueError):
    """An event field broke a provider limit; nothing was queued or sent.

    ``errors`` lists ``(field, reason)`` pairs; the message names each field and its limit.

    Example:
        >>> err = InvalidEventError("lead", [("customer_email", "must be an email address")])
        >>> str(err)
        'invalid lead event: customer_email: must be an email address'
    """

    def __init__(self, kind: str, errors: list[tuple[str, str]]) -> None:
        self.kind = kind
        self.errors = errors
        detail = "; ".join(f"{field}: {reason}" for field, reason in errors)
        super().__init__(f"invalid {kind} event: {detail}")

    @property
    def fields(self) -> list[str]:
        """The names of the offending fields, e.g. ``["customer_email"]``."""
        return [field for field, _ in self.errors]


class MissingClickIdError(InvalidEventError):
    """Raised instead of skipping when a lead has no click id and ``require_click_id=True``.

    Example:
        >>> str(MissingClickIdError("lead"))
        'invalid lead event: click_id: no click id on this request (organic visit)'
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind, [("click_id", "no click id on this request (organic visit)")])


class DeliveryError(AttributionError):
    """The provider refused an event, or it could not be reached.

    ``status_code`` is the HTTP status (None for a network failure), ``code`` and ``message`` come
    from the provider's ``{"error": {"code", "message"}}`` body; ``retryable`` says whether trying
    again could help, and ``retry_after`` is the server's ``Retry-After`` in seconds, if any.
    ``integration`` is True for a fault of the whole integration (:class:`IntegrationError`).

    Example:
        >>> err = DeliveryError("evt_1", "bad_request", "eventName: required", status_code=400)
        >>> err.retryable
        False
    """

    def __init__(
        self,
        event_id: str,
        code: str,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.event_id = event_id
        self.code = code
        self.message = message
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(self._text())

    #: True for a fault of the whole integration, not of this event (see IntegrationError).
    integration = False

    def _text(self) -> str:
        status = f"HTTP {self.status_code} " if self.status_code is not None else ""
        return f"event {self.event_id} not delivered: {status}{self.code}: {self.message}"

    def gave_up(self, attempts: int, elapsed: float) -> DeliveryError:
        """This error, noting that retrying stopped after ``attempts`` in ``elapsed`` seconds."""
        self.message += f" (gave up after {attempts} attempts in {elapsed:.1f}s)"
        self.args = (self._text(),)
        return self


class IntegrationError(DeliveryError):
    """A fault of the whole integration (key, permissions, path, redirect), not of one event.

    ``integration`` is True and ``retryable`` False: an inline send raises it at once, and
    the background queue and the outbox pause delivery (events stay queued) until a probe gets
    a 2xx. ``code`` is ``"unauthorized"``, ``"forbidden"``, ``"wrong_path"``, ``"redirect"``
    or ``"missing_api_key"``.

    Example:
        >>> error = IntegrationError("evt_1", "unauthorized", "invalid API key", status_code=401)
        >>> error.integration, error.retryable, isinstance(error, DeliveryError)
        (True, False, True)
    """

    integration = True

    def __init__(
        self, event_id: str, code: str, message: str, *, status_code: int | None = None
    ) -> None:
        super().__init__(event_id, code, message, status_code=status_code, retryable=False)


class QueueFullError(DeliveryError):
    """The background queue stayed full for ``queue_full_timeout`` (with ``when_full="raise"``).

    Example:
        >>> QueueFullError("evt_1", "queue_full", "10000 events waiting").retryable
        True
    """

    def __init__(self, event_id: str, code: str, message: str) -> None:
        super().__init__(event_id, code, message, retryable=True)


class OutboxError(AttributionError):
    """The outbox store cannot be used: a wrong path, a corrupt file, an unreachable server.

    The message is one line, fit for a log or a terminal.

    Example:
        >>> str(OutboxError("no outbox at /tmp/missing.db"))
        'no outbox at /tmp/missing.db'
    """


class InvalidSignatureError(AttributionError):
    """A webhook's signature header is missing or matches none of the secrets.

    Raised by :class:`~asgi_attribution.webhooks.WebhookVerifier`; the webhook endpoint answers
    it with 401 and runs no handler.

    Example:
        >>> from asgi_attribution.webhooks import WebhookVerifier
        >>> try:
        ...     WebhookVerifier(secrets="whsec_x").verify_body(b"{}", {"Dub-Signature": "00"})
        ... except InvalidSignatureError as exc:
        ...     print(exc)
        Dub-Signature does not match any secret
    """


class InvalidWebhookError(AttributionError, ValueError):
    """A correctly signed webhook whose body is not a webhook (not JSON, no id or event).

    Raised by :class:`~asgi_attribution.webhooks.WebhookVerifier` after the signature matched.

    Example:
        >>> from asgi_attribution.testing import sign_webhook
        >>> from asgi_attribution.webhooks import WebhookVerifier
        >>> body, headers = sign_webhook(b"[1]", "whsec_x")
        >>> try:
        ...     WebhookVerifier(secrets="whsec_x").verify_body(body, headers)
        ... except InvalidWebhookError as exc:
        ...     print(exc)
        webhook body is not a JSON object
    """
