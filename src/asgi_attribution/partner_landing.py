"""Deciding whether a request is a partner-link landing worth a click, and what the click needs.

Pure functions of an ASGI scope, used by :class:`~asgi_attribution.partner_clicks.PartnerClicks`:
a real browser navigation (not ``HEAD``, not a prefetch, ``Sec-Fetch-Mode: navigate`` when the
browser sends Sec-Fetch headers, not a bot User-Agent), the partner key from ``?via=``, the
landing URL, and the ``dub_partner_data`` cookie value in the browser script's format.

Example:
    >>> scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/pricing",
    ...          "query_string": b"via=john", "headers": [(b"host", b"acme.com"),
    ...          (b"user-agent", b"Mozilla/5.0"), (b"sec-fetch-mode", b"navigate")]}
    >>> is_navigation(scope), partner_key(scope["query_string"], ("via",), ("dub_id",))
    (True, 'john')
    >>> landing_url(scope)
    'https://acme.com/pricing?via=john'
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

from .cookies import host_of, is_https

__all__ = [
    "BOT_USER_AGENT",
    "header",
    "is_bot_user_agent",
    "is_navigation",
    "landing_url",
    "partner_data_cookie",
    "partner_key",
]

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
