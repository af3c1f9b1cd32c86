"""Forgetting the click once its conversion is safe: delete the cookies, never too early."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._context import MIDDLEWARE_HINT, RequestLike, scope_of, services_of
from ._cookies import ManagedCookies, host_of

__all__ = ["clear_attribution"]


if TYPE_CHECKING:
    from starlette.responses import Response

    from .transports._base import TrackResult

logger = logging.getLogger("asgi_attribution")


def clear_attribution(request: RequestLike | None, response: Response, result: TrackResult) -> bool:
    """Delete the click cookies on ``response`` once ``result`` shows the event was accepted.

    Also keeps them when the provider's answer says it recorded nothing (``result.outcome``
    ``"duplicate"`` or ``"not_recorded"``).

    Deletes every cookie the middleware reads or writes (the click cookie and legacy names, the
    partner cookie, the signed companion) with the same ``Path`` and ``Domain`` it sets them
    with. Does nothing and returns False unless ``result.accepted``: the provider answered 2xx,
    or a durable outbox holds the event. An event only queued in memory can still be lost, and
    then the click must still be there for a retry. Returns True when the deletions were added.

    The middleware sees the app's deletion and does not set its own cookie on the same
    response, even on a landing. ``request`` is what :func:`track_lead` takes: the request, its
    ASGI scope, or ``None`` for the request being handled.

    Example:
        >>> async def signup(request):
        ...     response = JSONResponse({"ok": True})
        ...     result = await track_lead(request, "Sign up", customer_external_id="user_42")
        ...     clear_attribution(request, response, result)
        ...     return response
    """
    scope = scope_of(request)  # a wrong argument is a TypeError, whatever the result
    if not result.accepted:
        logger.debug("click cookies kept: event %s is not accepted yet", result.event_id)
        return False
    if result.outcome in ("duplicate", "not_recorded"):
        # The provider answered 200 but recorded nothing: the click may still be needed.
        logger.debug("click cookies kept: event %s was %s", result.event_id, result.outcome)
        return False
    services = None if scope is None else services_of(scope)
    managed = None if services is None else services.managed_cookies
    if scope is None or not isinstance(managed, ManagedCookies):
        # Not worth failing a signup over: the cookies stay, and the log says how to fix it.
        logger.warning("click cookies kept: no middleware on this request; %s", MIDDLEWARE_HINT)
        return False
    host = host_of(scope, forwarded=managed.forwarded_host)
    for header in managed.deletions(host):
        response.headers.append("set-cookie", header)
    return True
