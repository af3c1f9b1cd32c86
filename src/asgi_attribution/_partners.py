"""Server-side partner clicks: ``?via=john`` landings recorded without the browser script.

A partner link on the main site (``https://acme.com/?via=john``) carries no click id. Dub's
browser script calls ``POST /track/click`` with ``{domain, key, url, referrer}`` and sets the
``dub_id`` and ``dub_partner_data`` cookies from the answer ``{clickId, partner?, discount?}``;
ad blockers stop that call with the script. :class:`PartnerClicks` makes the same call from the
server, within ``click_timeout``, so the landing is served on time whatever happens.

It asks only for a request worth a click, decided by pure functions of the ASGI scope: a real
browser navigation (:func:`is_navigation`: ``GET``, not a prefetch or prerender,
``Sec-Fetch-Mode: navigate`` when the browser sends Sec-Fetch headers, not a User-Agent that
Dub's bot filter drops), whose query names a partner key (:func:`partner_key`) and no click id
of its own. The call carries the landing URL (:func:`landing_url`) and the visitor's
User-Agent; the answer becomes the ``dub_partner_data`` cookie in the script's own format
(:func:`partner_data_cookie`).

Caveats: ``/track/click`` is not in Dub's published API (it is what the script calls); Dub
records the server's IP and country for such clicks (its identity hash is SHA-256 of the
caller's IP and User-Agent); visitors of one link sharing a browser and an IP within an hour
share one click (Dub's own rule, and this client's cache).

Example:
    >>> scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/pricing",
    ...          "query_string": b"via=john", "headers": [(b"host", b"acme.com"),
    ...          (b"user-agent", b"Mozilla/5.0"), (b"sec-fetch-mode", b"navigate")]}
    >>> is_navigation(scope), landing_url(scope)
    (True, 'https://acme.com/pricing?via=john')
    >>> PartnerClicks("dub", refer_domain="go.acme.com", click_query_params=("via", "ref")
    ...               ).wants_click(scope)
    'john'
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
import httpx

from ._cookies import host_of, is_https, valid_click_id
from ._providers import Provider, get_provider, redact

__all__ = [
    "BOT_USER_AGENT",
    "MAX_CLICK_ANSWER",
    "MAX_PARTNER_COOKIE",
    "PartnerClick",
    "PartnerClicks",
    "forwarded_client",
    "header",
    "is_bot_user_agent",
    "is_navigation",
    "landing_url",
    "partner_data_cookie",
    "partner_key",
]


logger = logging.getLogger("asgi_attribution")

HOUR = 3600.0

#: Bytes of a ``/track/click`` answer read at most (it is well under a kilobyte); a longer one
#: gives no click.
MAX_CLICK_ANSWER = 64 * 1024

#: Characters of a ``dub_partner_data`` value set at most: browsers drop a cookie over 4 KB
#: (name, value and attributes), and proxies refuse such headers (nginx answers 502).
MAX_PARTNER_COOKIE = 3500


#: Dub's bot filter for clicks (``apps/web/lib/middleware/utils/bots-list.ts``, case-insensitive
#: substrings), plus the crawlers Next.js' ``userAgent().isBot`` names that it would not catch.
#: A click from a matching User-Agent is answered with an id Dub never records.
_BOT_NAMES = (
    # generic: bots, crawlers, HTTP libraries and tools
    "bot|crawler|spider|http|scraper|fetch|curl|wget|python|node|ruby|axios|Guzzle|Postman|"
    "Insomnia|Newman|Scrapy|HeadlessChrome|"
    # named crawlers and link previews
    "chatgpt|bluesky|facebookexternalhit|facebookcatalog|meta-externalagent|meta-externalads|"
    "meta-externalfetcher|meta-webindexer|thirdLandingPageFeInfra|WhatsApp|"
    "Mediapartners-Google|googleweblight|Google-PageRenderer|baidu|bing|msn|duckduckbot|"
    "teoma|slurp|yandex|MetaInspector|iframely|ia_archiver|Sogou|SkypeUriPreview|vkShare|"
    "Tumblr|FeedBurner|quora link preview|Embedly|Qwantify|Wayback|heritrix|nutch|"
    # monitors and SEO tools
    "upptime|Hyperping|cron-job|InternetMeasurement|HostTracker|Expanse|seokicks|sistrix|"
    "searchmetrics|linkdex|opensiteexplorer|spyfu|serpstat|cognitiveseo|seobility|"
    "seositecheckup|woorank|gtmetrix|pingdom|statuscake|site24x7|monitis|gomez|neustar|"
    "catchpoint|webpagetest|speedcurve|dareboost|yellowlab|linkchecker|xenu|scrutiny|"
    "powermapper|siteimprove|monsido|"
    # AI crawlers
    "anthropic-ai|Claude-Web|perplexity|Omigili|timpi|ShortLinkTranslate|"
)

BOT_USER_AGENT = re.compile(
    "|".join(re.escape(name) for name in _BOT_NAMES.split("|") if name), re.IGNORECASE
)

_KEY_MAX = 255

# What a cookie value may hold as is: printable ASCII but ';' (which ends it). Anything else
# makes us percent-encode the whole value, which parse_partner_data decodes.
_COOKIE_SAFE = re.compile(r"[\x21-\x3a\x3c-\x7e ]*")

_URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as is


def is_bot_user_agent(user_agent: str | None) -> bool:
    """Whether Dub's bot filter matches ``user_agent`` (a missing one counts as a bot).

    Example:
        >>> is_bot_user_agent("python-httpx/0.27"), is_bot_user_agent("Googlebot/2.1")
        (True, True)
        >>> is_bot_user_agent("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Safari/605.1.15")
        False
    """
    return not user_agent or BOT_USER_AGENT.search(user_agent) is not None


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first ``name`` header of ``scope`` (lower-case bytes), decoded as Latin-1.

    Example:
        >>> header({"headers": [(b"referer", b"https://blog.test/")]}, b"referer")
        'https://blog.test/'
    """
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def is_navigation(scope: Mapping[str, Any]) -> bool:
    """A browser's top-level ``GET`` navigation: not ``HEAD``, not a prefetch or prerender,
    ``Sec-Fetch-Mode: navigate`` when Sec-Fetch headers are sent, not a bot User-Agent.

    Example:
        >>> base = {"type": "http", "method": "GET", "headers": [(b"user-agent", b"Mozilla/5.0")]}
        >>> is_navigation(base), is_navigation({**base, "method": "HEAD"})
        (True, False)
        >>> is_navigation({**base, "headers": base["headers"] + [(b"sec-purpose", b"prefetch")]})
        False
        >>> is_navigation({**base, "headers": base["headers"] + [(b"sec-fetch-mode", b"cors")]})
        False
    """
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return False
    user_agent = None
    fetch_mode = None
    saw_sec_fetch = False
    for key, raw in scope.get("headers", ()):
        if key == b"user-agent" and user_agent is None:
            user_agent = raw.decode("latin-1")
        elif key in (b"sec-purpose", b"purpose", b"x-purpose", b"x-moz"):
            value = raw.lower()
            if b"prefetch" in value or b"preview" in value or b"prerender" in value:
                return False
        elif key.startswith(b"sec-fetch-"):
            saw_sec_fetch = True
            if key == b"sec-fetch-mode":
                fetch_mode = raw.lower()
    if saw_sec_fetch and fetch_mode != b"navigate":
        return False
    return not is_bot_user_agent(user_agent)


def partner_key(
    query_string: bytes | str,
    params: Iterable[str],
    click_params: Iterable[str],
    placeholders: Collection[str] = (),
) -> str | None:
    """The partner link key of a landing: the first non-empty value among ``params`` (in that
    order), if it is 1-255 printable characters and the query carries no click id of its own
    (any of ``click_params``, e.g. ``dub_id``: a short link's redirect already recorded it;
    ``placeholders`` are values that are no click id, like PIMMS' ``?pimms_id=1``).

    Example:
        >>> partner_key(b"via=&ref=jane", ("via", "ref"), ("dub_id",))
        'jane'
        >>> partner_key(b"via=john&dub_id=c1", ("via",), ("dub_id",)) is None
        True
        >>> partner_key("via=%0A", ("via",), ("dub_id",)) is None
        True
    """
    text = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    if not text:
        return None
    pairs = parse_qsl(text, keep_blank_values=True)
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    if any(first.get(name) not in (None, "", *placeholders) for name in click_params):
        return None
    for name in params:
        key = first.get(name)
        if key:
            if len(key) <= _KEY_MAX and key.isprintable() and key.strip() == key:
                return key
            return None
    return None


def landing_url(scope: Mapping[str, Any], *, forwarded: bool = False) -> str:
    """The full URL the visitor landed on (scheme, host, path and query, as the browser has it).

    With ``forwarded=True`` the host and scheme come from the trusted proxy's headers.

    Example:
        >>> landing_url({"type": "http", "scheme": "http", "path": "/a b", "query_string": b"",
        ...              "headers": [(b"host", b"localhost:8000")]})
        'http://localhost:8000/a%20b'
    """
    scheme = "https" if is_https(scope, forwarded=forwarded) else "http"
    host = host_of(scope, forwarded=forwarded)
    raw_path = scope.get("raw_path")
    if raw_path:
        path = raw_path.decode("latin-1").partition("?")[0]
    else:
        path = quote(scope.get("root_path", "") + scope.get("path", "/"), safe="/%:@!$&'()*+,;=")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(allow: str | Sequence[str] | None) -> tuple[_Network, ...] | None:
    """The trusted proxies as networks; ``None`` for "the direct peer only", ``()`` for all."""
    if allow is None:
        return None
    items = allow.split(",") if isinstance(allow, str) else list(allow)
    names = [item.strip() for item in items if item.strip()]
    if "*" in names:
        return ()
    try:
        return tuple(ipaddress.ip_network(name, strict=False) for name in names)
    except ValueError as exc:
        raise ValueError(f"forwarded_allow_ips: {exc} (IPs or CIDR networks, or '*')") from None


def _address(hop: str) -> str:
    """A hop as written in ``Forwarded: for=`` or ``X-Forwarded-For``, without quotes or port."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):  # [2001:db8::1]:4711
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # 192.0.2.43:47011
        return hop.partition(":")[0]
    return hop


def _trusted(hop: str, networks: tuple[_Network, ...]) -> bool:
    if not networks:  # "*"
        return True
    try:
        address = ipaddress.ip_address(hop)
    except ValueError:
        return False  # "unknown", an obfuscated name: never a proxy we know
    return any(address in network for network in networks)


def forwarded_client(scope: Mapping[str, Any], allow: str | Sequence[str] | None = None) -> str:
    """The visitor's IP behind proxies, as uvicorn's ``forwarded_allow_ips`` finds it: the
    right-most hop of ``Forwarded: for=`` (else ``X-Forwarded-For``) that is not a trusted
    proxy. A visitor writes the left of these headers; only the hops the proxies appended can be
    believed.

    ``allow`` names the trusted proxies (IPs or CIDR networks, a list or a comma-separated
    string; ``"*"``: all). ``None`` trusts only the direct peer (one proxy in front): the
    right-most hop is the visitor. A peer that is not trusted is the visitor itself (its
    headers are ignored).

    Example:
        >>> scope = {"client": ("10.0.0.2", 5123),
        ...          "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]}
        >>> forwarded_client(scope)
        '203.0.113.9'
        >>> chain = {"client": ("10.0.0.2", 5123),
        ...          "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.3")]}
        >>> forwarded_client(chain, "10.0.0.0/8")
        '203.0.113.9'
        >>> forwarded_client(scope, ["192.168.0.1"])  # the peer is no proxy we trust
        '10.0.0.2'
    """
    return _client_behind(scope, _networks(allow))


def _client_behind(scope: Mapping[str, Any], networks: tuple[_Network, ...] | None) -> str:
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if networks is not None and not _trusted(peer, networks):
        return peer
    hops: list[str] = []
    for key, raw in scope.get("headers", ()):
        if key == b"forwarded":
            for element in raw.decode("latin-1").split(","):
                for pair in element.split(";"):
                    name, _, value = pair.strip().partition("=")
                    if name.lower() == "for" and value:
                        hops.append(_address(value))
    if not hops:
        for key, raw in scope.get("headers", ()):
            if key == b"x-forwarded-for":
                hops += [_address(hop) for hop in raw.decode("latin-1").split(",") if hop.strip()]
    if not hops:
        return peer
    if networks is None:
        return hops[-1]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0]  # every hop a trusted proxy: the farthest one is all we know


def _encode_component(value: Any) -> Any:
    return quote(value, safe=_URI_COMPONENT_SAFE) if isinstance(value, str) else value


def partner_data_cookie(answer: Mapping[str, Any]) -> str | None:
    """The ``dub_partner_data`` cookie value for a ``/track/click`` answer, as Dub's browser
    script writes it: the answer as compact JSON, partner ``name`` and ``image`` encoded as
    ``encodeURIComponent`` does. ``None`` for a link without a partner (no cookie then).

    The rare value a cookie cannot carry as is (a ``;``, non-ASCII outside name and image) is
    percent-encoded as a whole, which readers of the cookie decode first.

    Example:
        >>> partner_data_cookie({"clickId": "c1", "partner": {"id": "pn_1", "name": "Ada L.",
        ...                      "image": None}, "discount": None})
        '{"clickId":"c1","partner":{"id":"pn_1","name":"Ada%20L.","image":null},"discount":null}'
        >>> partner_data_cookie({"clickId": "c1"}) is None
        True
    """
    partner = answer.get("partner")
    if not isinstance(partner, Mapping):
        return None
    encoded = dict(partner)
    for key in ("name", "image"):
        if key in encoded:
            encoded[key] = _encode_component(encoded[key])
    data = {**answer, "partner": encoded}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if _COOKIE_SAFE.fullmatch(text) and not text.endswith(" "):
        return text
    # "{" encoded too: the value must not look like raw JSON to a reader.
    return quote(text, safe="}[]:,\"'!#$&()*+-./<=>?@^_`|~")


@dataclass(frozen=True, slots=True)
class PartnerClick:
    """The click the provider recorded (or reused) for a partner-link landing.

    ``partner_data_cookie`` is the ``dub_partner_data`` value to set (``None``: not a partner
    link, or a provider without that cookie); ``reused`` says it came from this process's
    one-hour cache rather than a new call.

    Example:
        >>> PartnerClick("c1", None, "john").click_id
        'c1'
    """

    click_id: str
    partner_data_cookie: str | None
    key: str
    reused: bool = False


class PartnerClicks:
    """Calls the provider's ``POST /track/click`` for partner-link landings.

    ``refer_domain`` is the workspace's referral domain (``go.acme.com``: the ``domain`` of the
    partner links); ``click_query_params`` the parameters naming the link key, first non-empty
    wins, with ``via`` always read after them, as Dub's script does; ``click_timeout`` bounds
    the whole call (seconds). ``api_key``, if given, is sent as ``Authorization: Bearer`` (the
    route needs none today). A visitor (IP and User-Agent) landing
    again on the same link within ``reuse_for`` seconds gets the same click without a call;
    at most ``rate_limit`` new clicks per client IP per ``rate_window`` seconds are made.
    With ``forwarded=True`` (only behind a proxy that sets them), the landing's host and
    scheme come from ``Forwarded`` / ``X-Forwarded-*``, and the client IP is the right-most hop
    that is not a trusted proxy (``forwarded_allow_ips``, see :func:`forwarded_client`). Across
    all visitors, at most ``max_concurrent_clicks`` calls are in flight and
    ``max_clicks_per_minute`` are made a minute: a landing over either lands without a server
    click. ``transport`` is an httpx transport for tests.

    Example:
        >>> clicks = PartnerClicks("dub", refer_domain="go.acme.com")
        >>> clicks.endpoint, clicks.click_timeout
        ('https://api.dub.co/track/click', 1.0)
        >>> PartnerClicks("dub", refer_domain="go.acme.com", click_query_params=("ref",)
        ...               ).click_query_params
        ('ref', 'via')
    """

    def __init__(
        self,
        provider: str | Provider = "dub",
        *,
        refer_domain: str,
        base_url: str | None = None,
        api_key: str | None = None,
        click_query_params: Sequence[str] = ("via",),
        click_timeout: float = 1.0,
        reuse_for: float = HOUR,
        rate_limit: int = 10,
        rate_window: float = 60.0,
        max_entries: int = 10_000,
        forwarded: bool = False,
        forwarded_allow_ips: str | Sequence[str] | None = None,
        max_concurrent_clicks: int = 16,
        max_clicks_per_minute: int = 600,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = get_provider(provider)
        if not isinstance(refer_domain, str) or not refer_domain.strip() or "/" in refer_domain:
            raise ValueError(
                f"refer_domain must be a domain like 'go.acme.com', got {refer_domain!r}"
            )
        params = (
            (click_query_params,) if isinstance(click_query_params, str) else click_query_params
        )
        params = tuple(params)
        if not params or not all(isinstance(p, str) and p for p in params):
            raise ValueError("click_query_params must name at least one query parameter")
        # As Dub's browser script reads them ([...custom, "via"]): a partner's ?via= link
        # keeps working whatever parameters the site adds.
        params = tuple(dict.fromkeys((*params, "via")))
        if not isinstance(click_timeout, (int, float)) or not 0 < click_timeout <= 30:
            raise ValueError(f"click_timeout must be > 0 and <= 30 seconds, got {click_timeout!r}")
        if reuse_for < 0 or rate_window <= 0 or rate_limit < 1 or max_entries < 1:
            raise ValueError("reuse_for >= 0, rate_limit >= 1, rate_window > 0, max_entries >= 1")
        for name, cap in (
            ("max_concurrent_clicks", max_concurrent_clicks),
            ("max_clicks_per_minute", max_clicks_per_minute),
        ):
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {cap!r}")
        self._trusted = _networks(forwarded_allow_ips)  # checked here: a typo raises now
        self.refer_domain = refer_domain.strip()
        self.base_url = (base_url or self.provider.base_url).rstrip("/")
        self.endpoint = f"{self.base_url}/track/click"
        self.click_query_params = params
        self.click_timeout = float(click_timeout)
        self.reuse_for = reuse_for
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.max_entries = max_entries
        self.forwarded = forwarded
        self.forwarded_allow_ips = forwarded_allow_ips
        self.max_concurrent_clicks = max_concurrent_clicks
        self.max_clicks_per_minute = max_clicks_per_minute
        self._in_flight = 0
        self._calls: collections.deque[float] = collections.deque()  # the last minute's calls
        self._api_key = api_key
        self._transport = transport
        own = [self.provider.query_param, *self.provider.cookie_names]
        if self.provider.no_track_param:
            own.append(self.provider.no_track_param)
        self._click_params = tuple(dict.fromkeys(own))
        self._recent: collections.OrderedDict[tuple[str, str, str], tuple[float, PartnerClick]]
        self._recent = collections.OrderedDict()
        self._minted: collections.OrderedDict[str, collections.deque[float]]
        self._minted = collections.OrderedDict()
        self._warned: set[str] = set()
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wants_click(self, scope: Mapping[str, Any]) -> str | None:
        """The partner key if ``scope`` is a landing that calls for a click, else ``None``.

        A browser navigation (see :func:`is_navigation`)
        whose query names a key in ``click_query_params`` and carries no click id.

        Example:
            >>> clicks = PartnerClicks("dub", refer_domain="go.acme.com")
            >>> scope = {"type": "http", "method": "GET", "query_string": b"via=john&dub_id=c1",
            ...          "headers": [(b"user-agent", b"Mozilla/5.0")]}
            >>> clicks.wants_click(scope) is None
            True
        """
        query = scope.get("query_string", b"")
        if not query or not is_navigation(scope):
            return None
        placeholders = self.provider.placeholder_click_ids
        return partner_key(query, self.click_query_params, self._click_params, placeholders)

    def client_ip(self, scope: Mapping[str, Any]) -> str:
        """The visitor's IP: the ASGI ``client``; with ``forwarded``, the right-most hop that
        is not a trusted proxy (:func:`forwarded_client`), never the visitor's own claim.

        Example:
            >>> PartnerClicks("dub", refer_domain="go.acme.com").client_ip(
            ...     {"client": ("10.0.0.7", 5123), "headers": []})
            '10.0.0.7'
        """
        if self.forwarded:
            return _client_behind(scope, self._trusted)
        client = scope.get("client")
        return str(client[0]) if client else ""

    async def click_for(self, scope: Mapping[str, Any]) -> PartnerClick | None:
        """The click for this landing: reused, or made now through ``/track/click``.

        ``None`` (and the landing is served without a cookie) when the request does not call
        for one (:meth:`wants_click`), when the client IP is over its rate limit, or when the
        call fails: an unknown link (404), an origin not allowed (403, warned once: fix the
        workspace's allowed hostnames), a timeout, a 5xx. Never raises; never takes longer
        than ``click_timeout``.

        Example:
            >>> import asyncio
            >>> clicks = PartnerClicks("dub", refer_domain="go.acme.com")
            >>> asyncio.run(clicks.click_for({"type": "http", "method": "HEAD", "headers": []}))
        """
        key = self.wants_click(scope)
        if key is None:
            return None
        user_agent = header(scope, b"user-agent") or ""
        ip = self.client_ip(scope)
        now = time.monotonic()
        cache_key = (key, ip, user_agent)
        cached = self._recent.get(cache_key)
        if cached is not None and cached[0] > now:
            self._recent.move_to_end(cache_key)
            hit = cached[1]
            return PartnerClick(hit.click_id, hit.partner_data_cookie, key, reused=True)
        if not self._below_caps(now):
            return None
        if not self._allow(ip, now):
            logger.info("partner click skipped: %s is over %d clicks", ip[:64], self.rate_limit)
            return None
        self._calls.append(now)
        self._in_flight += 1
        try:
            click = await self._call(scope, key, user_agent)
        except Exception:  # never fail a landing
            logger.exception("partner click for key %r failed unexpectedly", key[:80])
            return None
        finally:
            self._in_flight -= 1
        if click is not None and self.reuse_for > 0:
            self._recent[cache_key] = (time.monotonic() + self.reuse_for, click)
            self._recent.move_to_end(cache_key)
            while len(self._recent) > self.max_entries:
                self._recent.popitem(last=False)
        return click

    def _below_caps(self, now: float) -> bool:
        """Whether one more outbound call fits the global caps (warned once when it does not)."""
        calls = self._calls
        while calls and calls[0] <= now - 60.0:
            calls.popleft()
        if self._in_flight >= self.max_concurrent_clicks:
            cap = f"{self.max_concurrent_clicks} calls in flight"
        elif len(calls) >= self.max_clicks_per_minute:
            cap = f"{self.max_clicks_per_minute} calls in the last minute"
        else:
            return True
        self._log("cap", "partner click skipped: %s (landings served without a click)", cap)
        return False

    def _allow(self, ip: str, now: float) -> bool:
        stamps = self._minted.get(ip)
        if stamps is None:
            stamps = self._minted[ip] = collections.deque()
            while len(self._minted) > self.max_entries:
                self._minted.popitem(last=False)
        self._minted.move_to_end(ip)
        while stamps and stamps[0] <= now - self.rate_window:
            stamps.popleft()
        if len(stamps) >= self.rate_limit:
            return False
        stamps.append(now)
        return True

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.click_timeout),
                transport=self._transport,
                follow_redirects=False,
            )
            self._loop = loop
        return self._http

    async def _call(
        self, scope: Mapping[str, Any], key: str, user_agent: str
    ) -> PartnerClick | None:
        url = landing_url(scope, forwarded=self.forwarded)
        scheme = "https" if is_https(scope, forwarded=self.forwarded) else "http"
        headers = {
            "Content-Type": "application/json",
            # Verbatim: Dub's bot filter reads it, and the click's device and browser come from it.
            "User-Agent": user_agent,
            # Dub checks the page's host against the workspace's allowed hostnames.
            "Referer": url,
            "Origin": f"{scheme}://{host_of(scope, forwarded=self.forwarded)}",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {
            "domain": self.refer_domain,
            "key": key,
            "url": url,
            "referrer": header(scope, b"referer"),
        }
        try:
            with anyio.fail_after(self.click_timeout):
                status, text = await self._exchange(body, headers)
        except (TimeoutError, httpx.TimeoutException):
            self._log(
                "timeout",
                "partner click for key %r: no answer within %.2fs",
                key,
                self.click_timeout,
            )
            return None
        except httpx.HTTPError as exc:
            self._log(
                "network", "partner click for key %r: %s", key, f"{type(exc).__name__}: {exc}"
            )
            return None
        if text is None:
            self._log(
                "size", "partner click for key %r: answer over %d bytes", key, MAX_CLICK_ANSWER
            )
            return None
        return self._read(status, text, key)

    async def _exchange(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, str | None]:
        """The status and text of the answer (``None``: over MAX_CLICK_ANSWER, not kept); the
        text with the API key redacted, as the tracker's answers are."""
        client = self._client()
        request = client.build_request("POST", self.endpoint, json=body, headers=headers)
        response = await client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_CLICK_ANSWER:
                    return response.status_code, None
                chunks.append(chunk)
        finally:
            await response.aclose()
        text = b"".join(chunks).decode("utf-8", errors="replace")
        return response.status_code, redact(text, self._api_key)

    def _read(self, status: int, text: str, key: str) -> PartnerClick | None:
        if status == 403:
            self._log(
                "forbidden",
                "partner clicks are refused (403): add this site's host to the workspace's "
                "allowed hostnames (Dub: Settings > Analytics). %s",
                text[:300],
            )
            return None
        if status == 404:
            logger.info("partner click: no link %s/%s (404)", self.refer_domain, key[:80])
            return None
        if status != 200:
            self._log("status", "partner click for key %r: HTTP %d %s", key, status, text[:200])
            return None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        click_id = answer.get("clickId") if isinstance(answer, dict) else None
        if not isinstance(click_id, str) or valid_click_id(click_id, where="/track/click") is None:
            self._log("answer", "partner click for key %r: unexpected answer %s", key, text[:200])
            return None
        assert isinstance(answer, dict)
        cookie = partner_data_cookie(answer) if self.provider.partner_cookie else None
        if cookie is not None and len(cookie) > MAX_PARTNER_COOKIE:
            self._log(
                "cookie",
                "partner click for key %r: partner data of %d characters not set as a cookie "
                "(over %d: browsers would drop it); the click id is",
                key,
                len(cookie),
                MAX_PARTNER_COOKIE,
            )
            cookie = None
        return PartnerClick(click_id, cookie, key)

    def _log(self, kind: str, message: str, *args: Any) -> None:
        """Warn the first time of each kind (a configuration or an outage), then log at info."""
        args = tuple(a[:80] if isinstance(a, str) else a for a in args)
        if kind in self._warned:
            logger.info(message, *args)
        else:
            self._warned.add(kind)
            logger.warning(message, *args)

    async def aclose(self) -> None:
        """Close the HTTP client (a later call opens a new one).

        Example:
            >>> import asyncio
            >>> asyncio.run(PartnerClicks("dub", refer_domain="go.acme.com").aclose())
        """
        client, loop = self._http, self._loop
        self._http = self._loop = None
        # A client opened in another event loop cannot be closed from this one: dropped.
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()
