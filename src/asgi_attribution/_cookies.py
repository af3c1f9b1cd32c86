"""Reading and writing the click cookie: validation, parsing, and the Set-Cookie header.

Nothing here knows about delivery. Every value that may reach a header is validated first.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import cookie_parser

__all__ = [
    "ClickCookies",
    "CookiePolicy",
    "CookieReader",
    "ManagedCookies",
    "cookie_domain_for",
    "host_of",
    "is_click_id",
    "valid_click_id",
]


logger = logging.getLogger("asgi_attribution")

_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Whether a whole string is a click id (a match or ``None``); no logging, for hot paths.
is_click_id = _CLICK_ID.fullmatch

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
    """Reads a few named cookies from a raw ``Cookie`` header, as Starlette's parser would.

    One compiled regex over the bytes instead of parsing every cookie of the header, on the
    hot path of every attributed request. Same results as Starlette's parser for those names
    (split on ``;``, keys and values stripped, quoted values unquoted), except that the FIRST of
    duplicate cookies wins, as in the providers' scripts (browsers send the most specific path,
    then the oldest, first).

    Example:
        >>> CookieReader(["dub_id"]).read(b"a=1; xdub_id=no; dub_id=first; dub_id = later ")
        {'dub_id': 'first'}
    """

    __slots__ = ("_findall",)

    def __init__(self, names: Iterable[str]) -> None:
        alternatives = b"|".join(re.escape(name.encode()) for name in names)
        ws = b"[" + re.escape(_WS) + b"]*"
        # Anchored on ';' (the header gets one in front): the engine jumps from one ';' to the
        # next, far faster than trying a "start of cookie" alternative at every byte.
        pattern = b";" + ws + b"(" + alternatives + b")" + ws + b"=([^;]*)"
        self._findall = re.compile(pattern).findall

    def read(self, header: bytes) -> dict[str, str]:
        """The named cookies present in ``header``, decoded as Latin-1."""
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


class ClickCookies:
    """Reads the click cookie (the first valid of ``names``) and the partner cookie in one call.

    The same values as :class:`CookieReader` followed by validation, found with ``bytes.find``
    rather than a regex over the whole header: the click id read on a request is one call.

    Example:
        >>> ClickCookies(["dub_id"], "dub_partner_data").read(b"a=1; dub_id=c1; dub_id=c2")
        ('c1', None)
    """

    __slots__ = ("_accepts", "_clicks", "_partner")

    def __init__(
        self,
        names: Iterable[str],
        partner: str | None = None,
        accepts: Callable[[str], bool] | None = None,
    ) -> None:
        self._clicks = tuple((*_finder(name), f"cookie {name}") for name in names)
        self._partner = None if partner is None else _finder(partner)
        self._accepts = accepts

    def read(self, header: bytes) -> tuple[str | None, str | None]:
        """The valid click id (or ``None``) and the raw partner cookie (or ``None``)."""
        click = None
        for name, search, where in self._clicks:
            i = header.find(name)
            if i < 0:
                continue
            # The usual shape, "; name=<click id>;" at the first occurrence of the name, is the
            # first cookie of that name and a valid click: one regex call says so.
            clean = _CLEAN_CLICK(header, i + len(name))
            if clean is not None and (
                i == 0
                or header[i - 1] == 59  # ";"
                or (header[i - 1] == 32 and (i == 1 or header[i - 2] == 59))
            ):
                click = clean[1].decode()  # ASCII: the default codec is the fastest path
            else:  # spaces, quotes, "xname=", an invalid value: the exact path
                value = _first(header, name, search)
                if value is None:
                    continue
                click = value if is_click_id(value) else valid_click_id(value, where=where)
            if click is not None and (self._accepts is None or self._accepts(click)):
                break
            click = None
        partner = self._partner
        if partner is None or header.find(partner[0]) < 0:
            return click, None
        return click, _first(header, partner[0], partner[1])

    def partner(self, header: bytes) -> str | None:
        """The raw partner cookie in ``header``, if any."""
        partner = self._partner
        return None if partner is None else _first(header, partner[0], partner[1])


# "=" then a whole click id up to the next cookie: nothing to strip, unquote or reject.
_CLEAN_CLICK = re.compile(rb"=([A-Za-z0-9_-]{1,64})(?:;|\Z)").match


def _finder(name: str) -> tuple[bytes, Callable[[bytes], re.Match[bytes] | None]]:
    ws = b"[" + re.escape(_WS) + b"]*"
    return name.encode(), re.compile(b";" + ws + re.escape(name.encode()) + ws + b"=([^;]*)").search


def _first(
    header: bytes, name: bytes, search: Callable[[bytes], re.Match[bytes] | None]
) -> str | None:
    """The first cookie ``name`` in ``header``, as :meth:`CookieReader.read` would find it."""
    i = header.find(name)
    if i < 0:  # no cookie of that name without its name in the header
        return None
    j = i + len(name)
    # The usual shape ("; name=" or "name=" first) at the first occurrence is the first cookie
    # of that name; anything else (spaces around "=", "xname=") goes to the exact regex.
    if (
        j < len(header)
        and header[j] == 61  # "="
        and (
            i == 0
            or header[i - 1] == 59
            or (header[i - 1] == 32 and (i == 1 or header[i - 2] == 59))
        )
    ):
        end = header.find(b";", j)
        raw = header[j + 1 :] if end < 0 else header[j + 1 : end]
    else:
        found = search(b";" + header)
        if found is None:
            return None
        raw = found.group(1)
    value = raw.decode("latin-1").strip()
    if value.startswith('"'):  # rare: let Starlette's parser unquote it
        value = cookie_parser("x=" + value)["x"]
    return value


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
