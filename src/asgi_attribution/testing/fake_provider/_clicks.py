"""Clicks and time: which click ids the fake knows, Dub's ``POST /track/click`` for ``?via=``
links, and the clock its expiring keys live on.

Dub's browser script calls ``/track/click`` with ``{domain, key, url, referrer}`` when a visitor
lands through a partner link that carries no click id. Dub looks the link up (404 if unknown),
checks the page's ``Referer``/``Origin`` host against the workspace's allowed hostnames (403),
reuses the click id of the same visitor (SHA-256 of IP and User-Agent) on the same link for an
hour, and records the click unless the User-Agent looks like a bot (the id is answered anyway).

That hour is one of the keys the providers keep in Redis with an expiry: Dub also reserves a
lead's (customer, event name) key for a week with ``SET NX EX`` and caches a sale's answer under
its invoice id for a week; PIMMS keeps the lead key forever. :class:`ExpiringKeys` holds such
keys against a :class:`SteppedClock` that tests move forward instead of waiting.

Example:
    >>> book = ClickBook("dub", links={("go.acme.com", "john"): {}})
    >>> status, answer, recorded = book.track({"domain": "go.acme.com", "key": "john"}, {}, "::1")
    >>> status, recorded, book.known(answer["clickId"]), book.known("not a click id")
    (200, True, True, False)
    >>> clock = SteppedClock(lambda: 1000.0)
    >>> keys = ExpiringKeys(clock)
    >>> keys.reserve(("lead", "u1", "sign-up"), WEEK), keys.reserve(("lead", "u1", "sign-up"), WEEK)
    (True, False)
    >>> clock.advance(WEEK)
    >>> keys.reserve(("lead", "u1", "sign-up"), WEEK)
    True
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from ..._limits import CLICK_ID_PATTERN
from ..._providers import get_provider
from ._bodies import ProviderName, validation_message
from ._wire import error_body

__all__ = [
    "CORS_HEADERS",
    "HOUR",
    "WEEK",
    "Click",
    "ClickBook",
    "ExpiringKeys",
    "LinkSettings",
    "SteppedClock",
    "hostname_allowed",
    "identity_hash",
    "is_bot",
    "lead_event_key",
    "parse_link",
    "random_id",
    "request_hostname",
]


#: Seconds in an hour: how long Dub reuses a visitor's click id on one link.
HOUR = 60 * 60

#: Seconds in a week: Dub's lead dedup window and its invoice id window (PIMMS: invoice only).
WEEK = 7 * 24 * HOUR


class SteppedClock:
    """Unix time from ``source`` (``time.time`` by default) plus what :meth:`advance` added.

    Example:
        >>> clock = SteppedClock(lambda: 50.0)
        >>> clock.advance(10)
        >>> clock()
        60.0
    """

    __slots__ = ("_source", "offset")

    def __init__(self, source: Callable[[], float]) -> None:
        self._source = source
        self.offset = 0.0

    def __call__(self) -> float:
        return self._source() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead (never back).

        Example:
            >>> clock = SteppedClock(lambda: 0.0)
            >>> clock.advance(-1)
            Traceback (most recent call last):
            ...
            ValueError: seconds: must be >= 0, got -1
        """
        if seconds < 0:
            raise ValueError(f"seconds: must be >= 0, got {seconds!r}")
        self.offset += seconds


class ExpiringKeys:
    """Keys with values that lapse ``ttl`` seconds after they were set (``ttl=None``: never).

    Not locked: the fake calls it under its own lock.

    Example:
        >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
        >>> keys.put("in_1", {"sale": 1}, ttl=WEEK)
        >>> keys.get("in_1"), keys.get("in_2")
        ({'sale': 1}, None)
    """

    __slots__ = ("_clock", "_entries")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[Hashable, tuple[float | None, Any]] = {}

    def get(self, key: Hashable) -> Any:
        """The live value under ``key``, or ``None``.

        Example:
            >>> ExpiringKeys(SteppedClock(lambda: 0.0)).get("nothing") is None
            True
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires is not None and self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: Hashable, value: Any, ttl: float | None) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds, replacing any value (Redis ``SET EX``).

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.put("k", 1, ttl=None); keys.put("k", 2, ttl=None); keys.get("k")
            2
        """
        expires = None if ttl is None else self._clock() + ttl
        self._entries[key] = (expires, value)

    def reserve(self, key: Hashable, ttl: float | None, value: Any = True) -> bool:
        """Set ``key`` only if it is not live (Redis ``SET NX``); whether this call set it.

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.reserve("k", ttl=None), keys.reserve("k", ttl=None)
            (True, False)
        """
        if self.get(key) is not None:
            return False
        self.put(key, value, ttl)
        return True

    def clear(self) -> None:
        """Forget every key.

        Example:
            >>> keys = ExpiringKeys(SteppedClock(lambda: 0.0))
            >>> keys.put("k", 1, ttl=None); keys.clear(); keys.get("k") is None
            True
        """
        self._entries.clear()


def lead_event_key(event_name: str, *, every_space: bool = True) -> str:
    """The event name as a lead dedup key: lower-cased, spaces as ``-``.

    Dub replaces every space; PIMMS' code replaces only the first (``every_space=False``).

    Example:
        >>> lead_event_key("Sign up"), lead_event_key("SIGN UP"), lead_event_key("sign-up")
        ('sign-up', 'sign-up', 'sign-up')
        >>> lead_event_key("Sign up now"), lead_event_key("Sign up now", every_space=False)
        ('sign-up-now', 'sign-up now')
    """
    lowered = event_name.lower()
    return lowered.replace(" ", "-") if every_space else lowered.replace(" ", "-", 1)


#: What a link may carry: ``partner`` and ``discount`` objects (a partner link), ``url``.
LinkSettings = Mapping[str, Any]

#: Dub answers ``/track/click`` to any origin: the browser script calls it cross-site.
CORS_HEADERS = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, POST, PUT, DELETE, PATCH, OPTIONS"),
    ("access-control-allow-headers", "Content-Type, Authorization"),
]

_CLICK_ID = re.compile(CLICK_ID_PATTERN)

_ALPHABET = string.digits + string.ascii_letters

_BOT = re.compile("python|http", re.IGNORECASE)

_PARTNER_KEYS = ("id", "name", "image", "groupId", "tenantId")

_DISCOUNT_KEYS = ("id", "amount", "type", "maxDuration", "couponId", "couponTestId")


def random_id(length: int = 16, prefix: str = "") -> str:
    """A random alphanumeric id, as Dub's ``nanoid`` makes them.

    Example:
        >>> len(random_id()), random_id(4, prefix="evt_").startswith("evt_")
        (16, True)
    """
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def is_bot(user_agent: str) -> bool:
    """Whether Dub's bot filter would drop a click from this User-Agent.

    Example:
        >>> is_bot("python-httpx/0.27"), is_bot("curl/8.0 (+http://x)"), is_bot("Mozilla/5.0")
        (True, True, False)
    """
    return _BOT.search(user_agent) is not None


def identity_hash(ip: str, user_agent: str) -> str:
    """The visitor's identity on Dub: hex SHA-256 of ``"<ip>-<user agent>"``.

    Example:
        >>> identity_hash("1.2.3.4", "UA") == identity_hash("1.2.3.4", "UA") != identity_hash("1.2.3.5", "UA")
        True
    """  # noqa: E501
    return hashlib.sha256(f"{ip}-{user_agent}".encode()).hexdigest()


def request_hostname(headers: Mapping[str, str]) -> str | None:
    """The host of the page that called: ``Referer``, else ``Origin``, without ``www.``.

    Example:
        >>> request_hostname({"origin": "https://www.acme.com"}), request_hostname({})
        ('acme.com', None)
    """
    source = headers.get("referer") or headers.get("origin")
    if not source:
        return None
    try:
        hostname = urlsplit(source).hostname
    except ValueError:
        return None
    return hostname.removeprefix("www.") if hostname else None


def hostname_allowed(allowed: Collection[str] | None, hostname: str | None) -> bool:
    """Dub's allowed-hostnames check: none set allows all; ``*.acme.com`` matches subdomains.

    Example:
        >>> hostname_allowed(None, None), hostname_allowed(["acme.com"], None)
        (True, False)
        >>> hostname_allowed(["*.acme.com"], "app.acme.com"), hostname_allowed(["*.acme.com"], "acme.com")
        (True, False)
    """  # noqa: E501
    if not allowed:
        return True
    if not hostname:
        return False
    if hostname in allowed:
        return True
    return any(p.startswith("*.") and hostname.endswith("." + p[2:]) for p in allowed)


@dataclass(frozen=True)
class Click:
    """One click the fake recorded through ``POST /track/click``.

    Example:
        >>> Click("c1", "go.acme.com", "john", "https://acme.com", None, "1.2.3.4", "UA", 0.0).key
        'john'
    """

    id: str
    domain: str
    key: str
    url: str | None
    referrer: str | None
    ip: str
    user_agent: str
    timestamp: float
    partner: dict[str, Any] | None = None
    discount: dict[str, Any] | None = None


class _TrackClickBody(BaseModel):
    model_config = ConfigDict(strict=True)

    domain: str
    key: str
    url: str | None = None
    referrer: str | None = None


def _pick(value: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    return {k: value.get(k) for k in keys}


def parse_link(text: str) -> tuple[tuple[str, str], dict[str, Any]]:
    """A partner link from ``DOMAIN/KEY`` or ``DOMAIN/KEY=PARTNER NAME`` (the CLI's ``--link``).

    With a name, the link belongs to a partner (its id made from the name), so ``/track/click``
    answers the partner as Dub does; without one it is a plain link.

    Example:
        >>> parse_link("go.acme.com/john=John Doe")
        (('go.acme.com', 'john'), {'partner': {'id': 'pn_john_doe', 'name': 'John Doe'}})
        >>> parse_link("go.acme.com/summer")
        (('go.acme.com', 'summer'), {})
        >>> parse_link("john")
        Traceback (most recent call last):
        ...
        ValueError: link: expected DOMAIN/KEY or DOMAIN/KEY=PARTNER, got 'john'
    """
    link, _, partner = text.partition("=")
    domain, _, key = link.strip().partition("/")
    if not domain or not key or "/" in key or " " in link.strip():
        raise ValueError(f"link: expected DOMAIN/KEY or DOMAIN/KEY=PARTNER, got {text!r}")
    name = partner.strip()
    if not name:
        return (domain, key), {}
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "partner"
    return (domain, key), {"partner": {"id": f"pn_{slug}", "name": name}}


class ClickBook:
    """The clicks the fake knows: ``known_clicks`` (``None``: any well-formed id) and tracked ones.

    ``links`` maps ``(domain, key)`` to :data:`LinkSettings`; ``allowed_hostnames`` (``None`` or
    empty: all) is the workspace's list. Not locked: the fake calls it under its own lock.

    Example:
        >>> book = ClickBook("pimms", known_clicks={"c1"})
        >>> book.known("c1"), book.known("c2"), ClickBook("pimms").known("1")
        (True, False, False)
    """

    def __init__(
        self,
        provider: ProviderName,
        *,
        known_clicks: Collection[str] | None = None,
        links: Mapping[tuple[str, str], LinkSettings] | None = None,
        allowed_hostnames: Collection[str] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._placeholders = get_provider(provider).placeholder_click_ids
        self._initial = None if known_clicks is None else frozenset(known_clicks)
        self.links = {tuple(k): dict(v) for k, v in (links or {}).items()}
        self.allowed_hostnames = None if allowed_hostnames is None else list(allowed_hostnames)
        self._clock = clock or (lambda: 0.0)
        self._recent = ExpiringKeys(self._clock)
        self.reset()

    def reset(self) -> None:
        """Forget tracked clicks (the configured ``known_clicks`` stay known).

        Example:
            >>> book = ClickBook("dub", known_clicks=())
            >>> book.reset(); book.clicks()
            []
        """
        self._clicks: dict[str, Click] = {}
        self._known: set[str] | None = None if self._initial is None else set(self._initial)
        self._recent.clear()

    def known(self, click_id: str) -> bool:
        """Whether a lead or sale naming ``click_id`` finds its click.

        Example:
            >>> ClickBook("dub").known("abc123"), ClickBook("dub").known("")
            (True, False)
        """
        if click_id in self._clicks:
            return True
        if click_id in self._placeholders or not _CLICK_ID.match(click_id):
            return False
        return self._known is None or click_id in self._known

    def clicks(self) -> list[Click]:
        """The recorded clicks, oldest first.

        Example:
            >>> ClickBook("dub").clicks()
            []
        """
        return list(self._clicks.values())

    def get(self, click_id: str) -> Click | None:
        """The recorded click with this id, if it came through ``/track/click``.

        Example:
            >>> ClickBook("dub").get("c1") is None
            True
        """
        return self._clicks.get(click_id)

    def track(
        self, data: Any, headers: Mapping[str, str], ip: str
    ) -> tuple[int, dict[str, Any], bool]:
        """Handle one ``POST /track/click``: the status and the JSON answer.

        Example:
            >>> ClickBook("dub").track({"domain": "go.acme.com", "key": "nobody"}, {}, "::1")[0]
            404
        """
        try:
            body = _TrackClickBody.model_validate(data)
        except ValidationError as exc:
            return 422, error_body("unprocessable_entity", validation_message(exc)), False
        user_agent = headers.get("user-agent", "")
        recent_key = (body.domain, body.key, identity_hash(ip, user_agent))
        cached_id: str | None = self._recent.get(recent_key)
        settings = self.links.get((body.domain, body.key))
        if settings is None:
            message = f"Link not found for domain: {body.domain} and key: {body.key}."
            return 404, error_body("not_found", message), False
        click_id = cached_id or random_id()
        recorded = False
        if cached_id is None:
            hostname = request_hostname(headers)
            if not hostname_allowed(self.allowed_hostnames, hostname):
                message = (
                    f"Request origin '{hostname}' is not included in the allowed hostnames "
                    "for this workspace."
                )
                return 403, error_body("forbidden", message), False
            if not is_bot(user_agent):  # a bot gets an id, but no click is recorded
                self._record(click_id, body, settings, ip, user_agent)
                self._recent.put(recent_key, click_id, ttl=HOUR)
                recorded = True
        return 200, self._answer(click_id, settings), recorded

    def _record(
        self, click_id: str, body: _TrackClickBody, settings: LinkSettings, ip: str, ua: str
    ) -> None:
        url = body.url if body.url and urlsplit(body.url).scheme else settings.get("url")
        self._clicks[click_id] = Click(
            click_id,
            body.domain,
            body.key,
            url,
            body.referrer,
            ip,
            ua,
            self._clock(),
            _pick(settings.get("partner"), _PARTNER_KEYS),
            _pick(settings.get("discount"), _DISCOUNT_KEYS),
        )

    @staticmethod
    def _answer(click_id: str, settings: LinkSettings) -> dict[str, Any]:
        partner = _pick(settings.get("partner"), _PARTNER_KEYS)
        if partner is None:
            return {"clickId": click_id}
        return {
            "clickId": click_id,
            "partner": partner,
            "discount": _pick(settings.get("discount"), _DISCOUNT_KEYS),
        }
