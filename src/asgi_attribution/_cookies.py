"""Reading and writing the click cookie: validation, parsing, and the Set-Cookie header.

Also the touchpoints cookie (:class:`TouchCookie`): the first and last campaign touch, as
compact JSON in one signed (or plain) base64url value. Nothing here knows about delivery.
Every value that may reach a header is validated first.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from starlette.requests import cookie_parser

from ._signing import ClickSigner

__all__ = [
    "CookiePolicy",
    "CookieReader",
    "Headers",
    "ManagedCookies",
    "TouchCookie",
    "cookie_domain_for",
    "cookie_header",
    "host_of",
    "is_https",
    "valid_click_id",
]


logger = logging.getLogger("asgi_attribution")

#: An ASGI request's headers: (lowercase name, value) byte pairs, as the server gives them.
Headers = Iterable[tuple[bytes, bytes]]

_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Host names only (RFC 1123 letters, digits, '-', '.'): a Host header is client input and must
# never put ';' or CR/LF into our Set-Cookie.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")

NINETY_DAYS = 90 * 24 * 60 * 60

# Names that never face a browser on the internet: a Domain there means a proxy forwarded its
# own upstream host, and browsers would drop the cookie. Host-only then.
_INTERNAL = (".localhost", ".internal", ".local", ".lan", ".localdomain", ".home.arpa")


def valid_click_id(value: str | None, *, where: str = "value") -> str | None:
    """Return ``value`` if it looks like a click id (1-64 of ``[A-Za-z0-9_-]``), else ``None``.

    Rejected values are logged at debug level (escaped, truncated), never raised.

    Example:
        >>> valid_click_id("cm3abc_9"), valid_click_id("x; Path=/")
        ('cm3abc_9', None)
    """
    if value is None:
        return None
    if _CLICK_ID.fullmatch(value):
        return value
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("ignored malformed click id in %s: %r", where, value[:80])
    return None


# What str.strip() removes from a latin-1 string, as Starlette's parser strips keys and values.
_WS = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0"


class CookieReader:
    """Reads the cookies the middleware manages from a raw ``Cookie`` header.

    ``click_names`` are the click cookie's names in order of preference (the current name, then
    legacy ones such as PIMMS' ``dclid``); ``partner`` and ``signed`` name the partner cookie
    and the signed companion; ``accepts`` says whether the provider takes a click id (PIMMS
    refuses its link placeholder ``1``).

    :meth:`read` gives the same values as Starlette's parser for these names (split on ``;``,
    keys and values stripped, quoted values unquoted) with one regex over the bytes instead of
    parsing every cookie of the header, except that the FIRST of duplicate cookies wins, as in
    the providers' scripts (browsers send the most specific path, then the oldest, first).
    :meth:`click_id` validates: a malformed value is ignored (logged at debug level).

    Example:
        >>> reader = CookieReader(["dub_id"], partner="dub_partner_data")
        >>> cookies = reader.read(b"a=1; xdub_id=no; dub_id=bad id; dub_id = later ")
        >>> cookies, reader.click_id(cookies)
        ({'dub_id': 'bad id'}, None)
        >>> reader.click_id(reader.read(b"dub_id=c1; dub_id=c2"))
        'c1'
    """

    __slots__ = ("_findall", "_where", "accepts", "click_names", "partner", "signed")

    def __init__(
        self,
        click_names: Iterable[str],
        *,
        partner: str | None = None,
        signed: str | None = None,
        accepts: Callable[[str], bool] | None = None,
    ) -> None:
        self.click_names = tuple(click_names)
        self.partner = partner
        self.signed = signed
        self.accepts = accepts
        self._where = {name: f"cookie {name}" for name in self.click_names}
        names = [*self.click_names, *(name for name in (partner, signed) if name)]
        alternatives = b"|".join(re.escape(name.encode()) for name in names)
        ws = b"[" + re.escape(_WS) + b"]*"
        # Anchored on ';' (the header gets one in front), so "xdub_id=" is not "dub_id=".
        pattern = b";" + ws + b"(" + alternatives + b")" + ws + b"=([^;]*)"
        self._findall = re.compile(pattern).findall

    def read(self, header: bytes) -> dict[str, str]:
        """The named cookies present in ``header`` (the first of duplicates), as Latin-1 text."""
        found: dict[str, str] = {}
        for name, raw in self._findall(b";" + header):
            key = name.decode("latin-1")
            if key in found:
                continue
            value = raw.decode("latin-1").strip()
            if value.startswith('"'):  # rare: let Starlette's parser unquote it
                value = cookie_parser("x=" + value)["x"]
            found[key] = value
        return found

    def click_id(self, cookies: Mapping[str, str]) -> str | None:
        """The first valid click id the provider accepts in ``cookies``, by name preference."""
        for name in self.click_names:
            click = valid_click_id(cookies.get(name), where=self._where[name])
            if click is not None and (self.accepts is None or self.accepts(click)):
                return click
        return None


def cookie_header(headers: Headers) -> bytes | None:
    """The request's ``Cookie`` header from its ASGI ``headers``; ``None`` when it has none.

    HTTP/2 may split the cookies over several headers: they are joined as one.

    Example:
        >>> cookie_header([(b"host", b"a.com"), (b"cookie", b"a=1"), (b"cookie", b"dub_id=c1")])
        b'a=1; dub_id=c1'
    """
    header: bytes | None = None
    for name, value in headers:
        if name == b"cookie":
            header = value if header is None else header + b"; " + value
    return header


def host_of(scope: Mapping[str, Any], *, forwarded: bool = False) -> str:
    """The request's ``Host`` header (or the server name), as the cookie domain is derived from it.

    With ``forwarded=True`` (a trusted proxy in front), the first hop of ``Forwarded: host=`` or
    ``X-Forwarded-Host`` wins over ``Host``.

    Example:
        >>> host_of({"headers": [(b"host", b"www.example.com")]})
        'www.example.com'
        >>> host_of({"headers": [(b"host", b"app.internal"), (b"x-forwarded-host", b"acme.com")]},
        ...         forwarded=True)
        'acme.com'
    """
    if forwarded:
        host = _forwarded(scope, "host", b"x-forwarded-host")
        if host:
            return host
    for name, value in scope["headers"]:
        if name == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server")
    return str(server[0]) if server else ""


def is_https(scope: Mapping[str, Any], *, forwarded: bool = False) -> bool:
    """Whether the visitor's connection is https (with ``forwarded``: as the proxy says).

    Example:
        >>> is_https({"scheme": "http", "headers": [(b"x-forwarded-proto", b"https")]},
        ...          forwarded=True)
        True
    """
    if forwarded:
        proto = _forwarded(scope, "proto", b"x-forwarded-proto")
        if proto:
            return proto.lower() in ("https", "wss")
    return scope.get("scheme") in ("https", "wss")


def _forwarded(scope: Mapping[str, Any], key: str, legacy: bytes) -> str | None:
    """The first hop's ``key`` from ``Forwarded`` (RFC 7239), else from the ``X-Forwarded-*``."""
    standard = legacy_value = None
    for name, value in scope["headers"]:
        if name == b"forwarded" and standard is None:
            first = value.decode("latin-1").split(",")[0]
            for pair in first.split(";"):
                k, _, v = pair.strip().partition("=")
                if k.lower() == key:
                    standard = v.strip().strip('"')
        elif name == legacy and legacy_value is None:
            legacy_value = value.decode("latin-1").split(",")[0].strip()
    return standard or legacy_value or None


def cookie_domain_for(host: str) -> str | None:
    """The domain Dub's script would use: ``.`` + host without ``www.``; none for local hosts.

    Returns ``None`` for localhost, IP addresses, single-label and malformed hosts, and keeps
    ``www.`` when removing it would leave a single label.

    Example:
        >>> cookie_domain_for("www.example.com:8000"), cookie_domain_for("127.0.0.1:8000")
        ('.example.com', None)
    """
    if host.startswith("["):  # bracketed IPv6 literal
        return None
    name, colon, port = host.partition(":")
    # An empty or malformed port, or an unbracketed IPv6 address: not a name to scope to.
    if colon and not (port.isascii() and port.isdigit()):
        return None
    # One trailing dot is a fully qualified name; labels are checked one by one, so ".."
    # or "-a" never reach a Domain attribute a browser would refuse.
    name = name.removesuffix(".").lower()
    if not _HOSTNAME.fullmatch(name) or "." not in name or name.endswith(_INTERNAL):
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    base = name.removeprefix("www.")
    # "www.example" must not become Domain=.example: browsers refuse a single-label domain.
    return "." + (base if "." in base else name)


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """The attributes of the click cookie the middleware sets. Defaults match Dub's script.

    ``domain="auto"`` derives it from the Host header (see :func:`cookie_domain_for`); ``None``
    sets a host-only cookie. ``secure=None`` means Secure on https only.

    Example:
        >>> CookiePolicy().header("dub_id", "abc", host="localhost", https=False)
        'dub_id=abc; Max-Age=7776000; Path=/; SameSite=Lax'
    """

    max_age: int = NINETY_DAYS
    path: str = "/"
    domain: str | None = "auto"
    samesite: Literal["lax", "strict", "none"] = "lax"
    secure: bool | None = None
    httponly: bool = False
    # The attributes by (host, https): a plain dict, cheaper per landing than an lru_cache
    # that hashes the whole policy on every call.
    _cache: dict[tuple[str, bool], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.max_age < 0:
            raise ValueError(f"cookie max_age must be >= 0 seconds, got {self.max_age}")
        if not re.fullmatch(r"/[!#-:<-~]*", self.path):
            raise ValueError(f"cookie path must start with '/' and be printable, got {self.path!r}")
        if self.domain not in (None, "auto") and not _HOSTNAME.fullmatch(self.domain.lstrip(".")):
            raise ValueError(f"cookie domain must be a host name, got {self.domain!r}")
        if self.samesite not in ("lax", "strict", "none"):
            raise ValueError(f"cookie samesite must be lax, strict or none, got {self.samesite!r}")

    def header(self, name: str, value: str, *, host: str, https: bool) -> str:
        """Build the ``Set-Cookie`` value; ``value`` must already be validated.

        Written by hand rather than with ``http.cookies``: the value is a validated token, and
        this is on the landing request's hot path (the attributes are cached per host).
        """
        return f"{name}={value}{self.attributes(host, https)}"

    def attributes(self, host: str, https: bool) -> str:
        """What follows the value in ``Set-Cookie`` (``"; Max-Age=..."``), cached per host.

        Example:
            >>> CookiePolicy(domain=None).attributes("www.example.com", True)
            '; Max-Age=7776000; Path=/; SameSite=Lax; Secure'
        """
        key = (host, https)
        attributes = self._cache.get(key)
        if attributes is None:
            attributes = _attributes(self, host, https)
            if len(host) <= 260:  # never cache a hostile giant (a real host is <= 253 + port)
                if len(self._cache) >= 256:  # a site sees few hosts; a flood must not grow it
                    self._cache.clear()
                self._cache[key] = attributes
        return attributes

    def deletion(self, name: str, *, host: str) -> str:
        """A ``Set-Cookie`` value that deletes cookie ``name`` with the same path and domain."""
        parts = [f'{name}=""', "Max-Age=0", f"Path={self.path}"]
        domain = cookie_domain_for(host) if self.domain == "auto" else self.domain
        if domain:
            parts.append(f"Domain={domain}")
        return "; ".join(parts)


def _attributes(policy: CookiePolicy, host: str, https: bool) -> str:
    parts = [f"; Max-Age={policy.max_age}; Path={policy.path}"]
    domain = cookie_domain_for(host) if policy.domain == "auto" else policy.domain
    if policy.domain == "auto" and domain is None and host.partition(":")[0] not in _LOCAL:
        # Cached per host: said once for each.
        logger.warning(
            "click cookie for host %r is host-only (an internal or unusual name). Behind a "
            "proxy, forward the public host (nginx: proxy_set_header Host $host) or use "
            "AttributionMiddleware(forwarded_host=True)",
            host[:100],
        )
    if domain:
        parts.append(f"; Domain={domain}")
    parts.append(f"; SameSite={policy.samesite.capitalize()}")
    if policy.secure or (policy.secure is None and https) or policy.samesite == "none":
        parts.append("; Secure")
    if policy.httponly:
        parts.append("; HttpOnly")
    return "".join(parts)


_LOCAL = ("localhost", "127.0.0.1", "[::1]", "testserver", "")


@dataclass(frozen=True, slots=True)
class ManagedCookies:
    """The cookies the middleware reads and writes, and the policy it writes them with.

    Used to delete them all with the same ``Path`` and ``Domain`` (a cookie set with a domain
    is only deleted by a Set-Cookie naming the same domain).

    Example:
        >>> ManagedCookies(CookiePolicy(domain=None), ("dub_id",)).deletions("localhost")
        ['dub_id=""; Max-Age=0; Path=/']
    """

    policy: CookiePolicy
    names: tuple[str, ...]
    #: Whether the host comes from the proxy's ``Forwarded`` / ``X-Forwarded-Host``.
    forwarded_host: bool = False

    def deletions(self, host: str) -> list[str]:
        """One deleting ``Set-Cookie`` value per managed cookie."""
        return [self.policy.deletion(name, host=host) for name in self.names]


#: A touch as the cookie holds it: field name -> text (``time``: an int of epoch seconds).
TouchData = dict[str, Any]


class TouchCookie:
    """The ``attribution_touch`` cookie: the first and the last touch, in at most 1,500 bytes.

    The value is base64url of compact JSON (``{"f": first, "l": last}``, ``l`` left out when
    it is the first), signed with ``signer`` when given. Text values are cut to 100 characters,
    and shorter (halving) until the cookie fits. :meth:`load` answers ``None`` for anything
    that is not a value :meth:`dump` wrote (malformed, tampered, expired): absent.

    Example:
        >>> touches = TouchCookie(CookiePolicy(domain=None))
        >>> value, _, _ = touches.dump({"time": 1, "path": "/", "utm_source": "news"},
        ...                            {"time": 2, "path": "/a", "gclid": "g1"})
        >>> touches.load(value)
        ({'time': 1, 'path': '/', 'utm_source': 'news'}, {'time': 2, 'path': '/a', 'gclid': 'g1'})
        >>> touches.load("garbage!") is None
        True
    """

    __slots__ = ("_reader", "_signer", "name", "policy")

    #: The most a touch cookie's value may take (browsers keep 4,096 bytes per cookie).
    LIMIT = 1500
    #: The most characters a text value keeps.
    VALUE_LIMIT = 100

    def __init__(
        self,
        policy: CookiePolicy,
        signer: ClickSigner | None = None,
        *,
        name: str = "attribution_touch",
    ) -> None:
        self.name = name
        # The click cookie's domain, path and max age; never for scripts, never cross-site.
        self.policy = replace(policy, httponly=True, samesite="lax")
        self._signer = signer
        self._reader = CookieReader((name,))

    def raw(self, headers: Headers) -> str | None:
        """The cookie's value as the request ``headers`` carry it (unparsed), or ``None``."""
        header = cookie_header(headers)
        return None if header is None else self._reader.read(header).get(self.name)

    def dump(self, first: TouchData, last: TouchData) -> tuple[str, TouchData, TouchData]:
        """The cookie value for ``first`` and ``last`` (cut until it fits :attr:`LIMIT`), and
        the two touches as it holds them."""
        limit = self.VALUE_LIMIT
        while True:
            f, l_ = _cut(first, limit), _cut(last, limit)
            data = {"f": f} if f == l_ else {"f": f, "l": l_}
            value = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode("ascii")
            if self._signer is not None:
                value = self._signer.sign(value)
            if len(value) <= self.LIMIT or limit <= 1:
                return value, f, l_
            limit //= 2

    def load(self, value: str | None) -> tuple[TouchData, TouchData] | None:
        """``(first, last)`` from a cookie value, or ``None`` when it is not ours."""
        if not value or len(value) > self.LIMIT:
            return None
        payload = (
            value
            if self._signer is None
            else self._signer.unsign(value, limit=self.LIMIT, what="touch cookie")
        )
        if payload is None:
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError):
            logger.debug("ignored malformed touch cookie")
            return None
        touches = self.touches(data)
        if touches is None:
            logger.debug("ignored malformed touch cookie")
        return touches

    @staticmethod
    def touches(data: Any) -> tuple[TouchData, TouchData] | None:
        """``(first, last)`` from the decoded ``{"f": ..., "l": ...}`` a cookie value (or an
        attribution state token) holds, or ``None`` when it has another shape.

        Example:
            >>> TouchCookie.touches({"f": {"time": 1, "path": "/"}})
            ({'time': 1, 'path': '/'}, {'time': 1, 'path': '/'})
            >>> TouchCookie.touches({"f": {"time": "1"}}) is None
            True
        """
        if not isinstance(data, dict):
            return None
        first, last = data.get("f"), data.get("l", data.get("f"))
        if isinstance(first, dict) and isinstance(last, dict) and _touch_data(first, last):
            return first, last
        return None

    def header(self, value: str, *, host: str, https: bool) -> tuple[bytes, bytes]:
        """The ``Set-Cookie`` header for ``value`` (a :meth:`dump`), for the request's host."""
        return (
            b"set-cookie",
            self.policy.header(self.name, value, host=host, https=https).encode(),
        )


def _cut(touch: TouchData, limit: int) -> TouchData:
    return {k: v[:limit] if isinstance(v, str) else v for k, v in touch.items()}


def _touch_data(*touches: dict[Any, Any]) -> bool:
    """Whether each of ``touches`` has the shape :meth:`TouchCookie.dump` writes."""
    return all(
        type(touch.get("time")) is int
        and isinstance(touch.get("path"), str)
        and all(
            isinstance(k, str) and (k == "time" or isinstance(v, str)) for k, v in touch.items()
        )
        for touch in touches
    )
