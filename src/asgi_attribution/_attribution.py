"""What the middleware learned about one request: the click id and the partner behind it."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import HTTPConnection

from ._context import SCOPE_KEY, RequestLike, middleware_hint, scope_of
from ._cookies import CookieReader, Headers, cookie_header
from ._providers import Provider

__all__ = [
    "Attribution",
    "Discount",
    "Partner",
    "PartnerData",
    "attribution_in",
    "get_attribution",
    "parse_partner_data",
]


logger = logging.getLogger("asgi_attribution")


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
    """The click behind one request, as seen by :class:`AttributionMiddleware`: plain data.

    ``click_id`` is ``None`` for an organic visit. ``source`` is ``"cookie"`` or ``"query"`` (a
    landing). ``captured`` is True when this request landed with the click id in its URL and the
    cookie was set. ``verified`` is True when the server itself saw this click id arrive in a
    landing URL (on the landing, or later through the signed companion cookie, within its max
    age); always False without ``signing_secrets`` on the middleware. The cookies are read on
    first access of ``click_id`` (most requests never ask), and ``partner_data`` parses Dub's
    partner cookie on first access only.

    Example:
        >>> a = Attribution(DUB, click_id="abc", source="cookie")
        >>> a.click_id, a.is_attributed
        ('abc', True)
    """

    __slots__ = (
        "_click",
        "_headers",
        "_partner",
        "_partner_raw",
        "_reader",
        "_source",
        "captured",
        "provider",
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
    ) -> None:
        self._fill(provider, click_id, source, partner_raw, captured, verified, None, None)

    def _fill(
        self,
        provider: Provider,
        click_id: str | None,
        source: Literal["cookie", "query"] | None,
        partner_raw: str | None,
        captured: bool,
        verified: bool,
        headers: Headers | None,
        reader: CookieReader | None,
    ) -> None:
        self.provider = provider
        self._click = click_id
        self._source = source
        self.captured = captured
        self.verified = verified
        self._partner_raw = partner_raw
        self._partner: PartnerData | Literal[False] | None = False
        # The request's headers, their cookies not read yet, and what reads them (see
        # from_headers).
        self._headers = headers
        self._reader = reader

    @classmethod
    def from_headers(
        cls,
        provider: Provider,
        headers: Headers,
        reader: CookieReader,
        landed: str | None = None,
    ) -> Attribution:
        """An attribution whose cookies are read from the request's ASGI ``headers`` on first use.

        The middleware's answer for a request whose cookies decide nothing now: most requests
        never ask for their click, and then the headers are not even searched for a ``Cookie``.
        No ``Cookie`` header: an organic visit. ``landed``: the click id of a landing URL (it
        wins; the cookies then give only the partner cookie).

        Example:
            >>> headers = [(b"host", b"a.com"), (b"cookie", b"dub_id=c1")]
            >>> a = Attribution.from_headers(DUB, headers, CookieReader(["dub_id"]))
            >>> a.click_id, a.source
            ('c1', 'cookie')
            >>> Attribution.from_headers(DUB, headers, CookieReader(["dub_id"]), "c2").click_id
            'c2'
        """
        # This runs on almost every request: built without __init__'s keywords, which a type
        # call first gathers into a dict (6,400 instructions instead of 3,900).
        attribution = cls.__new__(cls)
        if landed is None:
            attribution._fill(provider, None, None, None, False, False, headers, reader)
        else:
            attribution._fill(provider, landed, "query", None, True, False, headers, reader)
        return attribution

    @classmethod
    def from_landing(
        cls,
        provider: Provider,
        click_id: str,
        partner_raw: str | None = None,
        *,
        verified: bool = False,
    ) -> Attribution:
        """The attribution of a landing: ``click_id`` from the URL, captured into the cookie.

        Example:
            >>> a = Attribution.from_landing(DUB, "c1")
            >>> a.click_id, a.source, a.captured
            ('c1', 'query', True)
        """
        attribution = cls.__new__(cls)
        attribution.provider = provider
        attribution._click, attribution._source = click_id, "query"
        attribution._partner_raw, attribution._partner = partner_raw, False
        attribution.captured, attribution.verified = True, verified
        attribution._headers = attribution._reader = None
        return attribution

    def _read_cookies(self) -> None:
        headers, reader = self._headers, self._reader
        if headers is None or reader is None:
            return
        self._headers = self._reader = None
        header = cookie_header(headers)
        if header is None:
            return
        cookies = reader.read(header)
        if not self.captured:
            self._click = reader.click_id(cookies)
            self._source = "cookie" if self._click is not None else None
        self._partner_raw = cookies.get(reader.partner) if reader.partner else None

    @property
    def click_id(self) -> str | None:
        """The click id, or ``None`` for an organic visit."""
        self._read_cookies()
        return self._click

    @property
    def source(self) -> Literal["cookie", "query"] | None:
        """Where the click id came from: ``"cookie"``, ``"query"`` (a landing) or ``None``."""
        self._read_cookies()
        return self._source

    @property
    def partner_raw(self) -> str | None:
        """The raw partner cookie (``dub_partner_data``) as the browser sent it, if any."""
        self._read_cookies()
        return self._partner_raw

    @property
    def is_attributed(self) -> bool:
        """Whether this request carries a click id."""
        return self.click_id is not None

    @property
    def partner_data(self) -> PartnerData | None:
        """Dub's ``dub_partner_data`` cookie, parsed and decoded on first access."""
        if self._partner is False:
            raw = self.partner_raw
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


def get_attribution(request: RequestLike | None = None) -> Attribution:
    """The :class:`Attribution` the middleware attached to ``request`` (HTTP or WebSocket).

    ``request`` is the framework's request (Starlette, FastAPI, Django ASGI, Litestar, Quart:
    anything with an ASGI ``.scope``), a raw ASGI scope, or ``None`` for the request being
    handled. Works as a FastAPI dependency: ``attribution: Attribution =
    Depends(get_attribution)``. Raises ``RuntimeError`` when :class:`AttributionMiddleware` did
    not see the request, because that is a setup mistake to fix, not a visitor to ignore, and
    ``TypeError`` for anything that is not a request (a WSGI request, say).

    Example:
        >>> from starlette.requests import Request
        >>> get_attribution(Request({"type": "http"}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: no attribution on this request: add AttributionMiddleware to the app ...
        >>> get_attribution({"type": "http", "asgi_attribution": Attribution(DUB)}).click_id
    """
    scope = scope_of(request)
    if scope is None:
        raise RuntimeError("no request being handled: pass the request (or its ASGI scope)")
    return attribution_in(scope)


# FastAPI injects the request into a dependency whose parameter names a request class; the
# wider annotation above is for type checkers and readers.
get_attribution.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
        )
    ],
    return_annotation=Attribution,
)


def attribution_in(scope: Mapping[str, Any]) -> Attribution:
    """The :class:`Attribution` in an ASGI ``scope``; ``RuntimeError`` naming the fix if none.

    Example:
        >>> attribution_in({"asgi_attribution": Attribution(DUB, click_id="c1")}).click_id
        'c1'
    """
    attribution = scope.get(SCOPE_KEY)
    if not isinstance(attribution, Attribution):
        raise RuntimeError("no attribution on this request: " + middleware_hint(scope))
    return attribution
