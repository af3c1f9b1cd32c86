"""Consent: whether this visitor's click may be kept, asked only when there is one to keep."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection
from starlette.types import Scope

__all__ = ["Consent", "ConsentCheck"]

logger = logging.getLogger("asgi_attribution")

ConsentCheck = Callable[[HTTPConnection], "bool | Awaitable[bool]"]
"""``consent(connection) -> bool`` (or an awaitable bool): may this visitor's click be kept?"""


class Consent:
    """The middleware's consent rule: a callable, a ``Sec-GPC: 1`` header, or both.

    A callable that raises counts as "no consent" (logged), never as a failed request.

    Example:
        >>> import asyncio
        >>> rule = Consent(None, honor_gpc=True)
        >>> asyncio.run(rule.allows({"type": "http", "headers": [(b"sec-gpc", b"1")]}))
        False
    """

    __slots__ = ("check", "gated", "honor_gpc")

    def __init__(self, check: ConsentCheck | None, honor_gpc: bool) -> None:
        self.check = check
        self.honor_gpc = honor_gpc
        #: Whether anything is asked at all (else every visitor consents, at no cost).
        self.gated = check is not None or honor_gpc

    async def allows(self, scope: Scope) -> bool:
        """Whether the visitor of ``scope`` consents to keeping their click."""
        if self.honor_gpc and any(
            name == b"sec-gpc" and value.strip() == b"1" for name, value in scope["headers"]
        ):
            return False
        if self.check is None:
            return True
        try:
            answer = self.check(HTTPConnection(scope))
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        except Exception:
            logger.exception("consent callable failed; treating the visitor as not consenting")
            return False
