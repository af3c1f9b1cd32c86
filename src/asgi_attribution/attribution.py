"""What the middleware learned about one request: the click id and the partner behind it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationError

from .providers import Provider

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from .cookies import ManagedCookies
    from .tracking import Tracker

__all__ = ["Attribution", "Discount", "Partner", "PartnerData", "get_attribution"]

logger = logging.getLogger("asgi_attribution")

STATE_KEY = "attribution"
# Reads a raw Cookie header into (click id, raw partner cookie); supplied by the middleware.
CookieRead = Callable[[bytes], "tuple[str | None, str | None]"]
# The attribution of the request being handled, so decorators and background helpers can find
# it without a Request argument. Set and reset by the middleware around each request.
current_attribution: ContextVar[Attribution | None] = ContextVar(
    "asgi_attribution_current", default=None
)


class Partner(BaseModel):
    """The partner (affiliate) whose link brought the visitor, from ``dub_partner_data``.

    Example:
        >>> Partner(id="pn_1", name="Ada").name
        'Ada'
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    id: str | None = None
    name: str | None = None
    image: str | None = None
    groupId: str | None = None
    tenantId: str | None = None


class Discount(BaseModel):
    """The discount the partner's link carries (``amount`` is a percentage or cents by ``type``).

    Example:
        >>> Discount(amount=20, type="percentage").amount
        20.0
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str | None = None
    amount: float | None = None
    type: str | None = None
    maxDuration: int | None = None
    couponId: str | None = None
    couponTestId: str | None = None


class PartnerData(BaseModel):
    """The parsed ``dub_partner_data`` cookie: click id, partner and discount.

    Example:
        >>> PartnerData(clickId="c1", partner={"name": "Ada"}).partner.name
        'Ada'
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    clickId: str | None = None
    partner: Partner | None = None
    discount: Discount | None = None


def parse_partner_data(raw: str) -> PartnerData | None:
    """Parse Dub's partner cookie; ``None`` (logged at debug) when it is not what Dub writes.

    Dub's script writes JSON with the partner name and image URI-encoded, and its cookie library
    may percent-encode the whole value, so both layers are decoded.

    Example:
        >>> parse_partner_data('{"partner":{"name":"Ada%20L."}}').partner.name
        'Ada L.'
    """
    text = raw if raw.startswith("{") else unquote(raw)
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        partner = data.get("partner")
        if isinstance(partner, dict):
            for key in ("name", "image"):
                if isinstance(partner.get(key), str):
                    partner[key] = unquote(partner[key])
        return PartnerData.model_validate(data)
    except (ValueError, ValidationError) as exc:
        logger.debug("ignored malformed partner cookie: %s", str(exc)[:200])
        return None


class Attribution:
    """The click behind one request, as seen by :class:`AttributionMiddleware`.

    ``click_id`` is ``None`` for an organic visit. ``source`` is ``"cookie"`` or ``"query"`` (a
    landing). The cookies are read on first access of ``click_id`` (most requests never ask),
    and ``partner_data`` parses Dub's partner cookie on first access only.

    Example:
        >>> a = Attribution(DUB, click_id="abc", source="cookie")
        >>> a.click_id, a.is_attributed
        ('abc', True)
    """

    __slots__ = (
        "_click",
        "_cookies",
        "_partner",
        "_partner_raw_value",
        "_read",
        "_source",
        "captured",
        "managed_cookies",
        "provider",
        "tracker",
        "verified",
    )

    def __init__(
        self,
        provider: Provider,
        *,
        click_id: str | None = None,
        source: Literal["cookie", "query"] | None = None,
        partner_raw: str | None = None,
        captured: bool = False,
        verified: bool = False,
        tracker: Tracker | None = None,
        managed_cookies: ManagedCookies | None = None,
    ) -> None:
        self.provider = provider
        self._click = click_id
        self._source = source
        #: True when this request landed with the click id in its URL and the cookie was set.
        self.captured = captured
        #: True when the server itself saw this click id arrive in a landing URL: on the landing,
        #: or later when the signed companion cookie agrees with the click cookie and is within
        #: its max age. Always False without ``signing_secrets`` on the middleware.
        self.verified = verified
        self.tracker = tracker
        #: The cookies the middleware manages here, for :func:`clear_attribution`.
        self.managed_cookies = managed_cookies
        self._partner_raw_value = partner_raw
        self._partner: PartnerData | Literal[False] | None = False
        self._cookies: bytes | None = None
        self._read: CookieRead | None = None

    @classmethod
    def _deferred(
        cls,
        provider: Provider,
        tracker: Tracker | None,
        managed_cookies: ManagedCookies | None,
        cookies: bytes | None = None,
        read: CookieRead | None = None,
    ) -> Attribution:
        """An attribution whose ``Cookie`` header is read on first use (the middleware's path).

        Built without keyword parsing: this runs on every request.
        """
        self = cls.__new__(cls)
        self.provider = provider
        self.tracker = tracker
        self.managed_cookies = managed_cookies
        self.captured = self.verified = False
        self._click = self._source = self._partner_raw_value = None
        self._partner = False
        self._cookies = cookies
        self._read = read
        return self

    def _resolve(self) -> None:
        cookies, read = self._cookies, self._read
        assert cookies is not None and read is not None
        self._click, self._partner_raw_value = read(cookies)
        self._source = "cookie" if self._click is not None else None
        self._cookies = self._read = None

    @property
    def click_id(self) -> str | None:
        """The click id, or ``None`` for an organic visit."""
        if self._cookies is not None:
            self._resolve()
        return self._click

    @property
    def source(self) -> Literal["cookie", "query"] | None:
        """Where the click id came from: ``"cookie"``, ``"query"`` (a landing) or ``None``."""
        if self._cookies is not None:
            self._resolve()
        return self._source

    @property
    def _partner_raw(self) -> str | None:
        if self._cookies is not None:
            self._resolve()
        return self._partner_raw_value

    @property
    def is_attributed(self) -> bool:
        """Whether this request carries a click id."""
        return self.click_id is not None

    @property
    def partner_data(self) -> PartnerData | None:
        """Dub's ``dub_partner_data`` cookie, parsed and decoded on first access."""
        if self._partner is False:
            raw = self._partner_raw
            self._partner = parse_partner_data(raw) if raw else None
        return self._partner

    @property
    def partner(self) -> Partner | None:
        """The referring partner, if Dub's partner cookie names one."""
        data = self.partner_data
        return data.partner if data else None

    @property
    def discount(self) -> Discount | None:
        """The partner's discount, if Dub's partner cookie carries one."""
        data = self.partner_data
        return data.discount if data else None

    def __repr__(self) -> str:
        return (
            f"Attribution(provider={self.provider.name!r}, click_id={self.click_id!r}, "
            f"source={self.source!r}, verified={self.verified})"
        )


class RequestState(MutableMapping[str, Any]):
    """``scope["state"]`` as the app sees it: the server's dict, plus this request's attribution.

    Servers and test tools may hand every request the same state dict, so the attribution must
    not be written into it; and a copy would hide the app's own writes (``request.state.user =
    ...``) from outer middleware. This view keeps the attribution per request and passes every
    other key through to the shared dict.

    Example:
        >>> shared = {"db": "pool"}
        >>> state = RequestState(shared, "attribution of this request")
        >>> state["user"] = "ada"
        >>> shared, state[STATE_KEY]
        ({'db': 'pool', 'user': 'ada'}, 'attribution of this request')
    """

    __slots__ = ("_attribution", "_shared")

    def __init__(self, shared: MutableMapping[str, Any], attribution: Any) -> None:
        self._shared = shared
        self._attribution = attribution

    def __getitem__(self, key: str) -> Any:
        return self._attribution if key == STATE_KEY else self._shared[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == STATE_KEY:
            self._attribution = value
        else:
            self._shared[key] = value

    def __delitem__(self, key: str) -> None:
        if key == STATE_KEY:
            raise KeyError(key)  # the middleware's, for the whole request
        del self._shared[key]

    def __iter__(self) -> Iterator[str]:
        yield STATE_KEY
        yield from (key for key in self._shared if key != STATE_KEY)

    def __len__(self) -> int:
        return len(self._shared) + (STATE_KEY not in self._shared)

    def copy(self) -> dict[str, Any]:
        """A plain dict of the state as this request sees it."""
        return dict(self)


def get_attribution(request: HTTPConnection | dict[str, Any]) -> Attribution:
    """The :class:`Attribution` the middleware attached to ``request`` (or an ASGI scope).

    Raises ``RuntimeError`` when :class:`AttributionMiddleware` is not installed, because that
    is a setup mistake to fix, not a visitor to ignore.

    Example:
        >>> async def signup(request):
        ...     attribution = get_attribution(request)
        ...     return attribution.click_id
    """
    scope = request if isinstance(request, dict) else request.scope
    state = scope.get("state")
    attribution = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if not isinstance(attribution, Attribution):
        raise RuntimeError(
            "no attribution on this request: add AttributionMiddleware to the app "
            "(app.add_middleware(AttributionMiddleware, tracker=tracker))"
        )
    return attribution
