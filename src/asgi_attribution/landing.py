"""A landing: the click id in the URL, and our cookies added to the app's own response.

Both are on the hot path of every landing, so each is written for it: the one parameter is
found without parsing the whole query (unless the query needs unquoting), and the cookies are
appended to the raw header pairs.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.types import Message, Send

from .cookies import valid_click_id
from .providers import Provider

__all__ = ["CookieSender", "LandingQuery"]


class LandingQuery:
    """Reads the provider's click id from a landing's query string, as its script would.

    The first occurrence wins (``URLSearchParams.get``); the provider's no-track parameter
    anywhere means no click; a malformed id or a link placeholder (PIMMS' ``1``) is none.

    Example:
        >>> LandingQuery(DUB).click(b"utm=x&dub_id=clk1&dub_id=clk2")
        'clk1'
        >>> LandingQuery(DUB).click(b"dub_id=clk1&dub-no-track") is None
        True
    """

    __slots__ = (
        "_accepts",
        "_no_track",
        "_no_track_search",
        "_param",
        "_search",
        "_where",
        "needle",
    )

    def __init__(self, provider: Provider) -> None:
        self._param = provider.query_param
        self._no_track = provider.no_track_param
        self._accepts = provider.accepts_click_id
        #: Bytes whose absence from the query means no landing (a cheap first test).
        self.needle = provider.query_param.encode() + b"="
        self._where = f"query {provider.query_param}"
        self._search = re.compile(rb"(?:^|&)" + re.escape(self.needle) + rb"([^&]*)").search
        no_track = provider.no_track_param
        self._no_track_search = (
            None
            if no_track is None
            else re.compile(rb"(?:^|&)" + re.escape(no_track.encode()) + rb"(?:[=&]|$)").search
        )

    def click(self, query: bytes) -> str | None:
        """The click id in ``query`` (raw bytes), or ``None``."""
        if b"%" in query or b"+" in query:
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="replace")
            click = None
            for key, value in params:
                if self._no_track and key == self._no_track:
                    return None
                if key == self._param and click is None:
                    click = value
        else:
            if self._no_track_search is not None and self._no_track_search(query):
                return None
            found = self._search(query)
            click = found.group(1).decode("latin-1") if found is not None else None
        click = valid_click_id(click, where=self._where)
        # A placeholder (PIMMS' `?pimms_id=1`) never overwrites a real click.
        return click if click is None or self._accepts(click) else None


class CookieSender:
    """Appends our Set-Cookie headers to the app's response start, unless the app set ours.

    Example:
        >>> sent = []
        >>> async def send(message):
        ...     sent.append(message)
        >>> import asyncio
        >>> asyncio.run(CookieSender(send, ("dub_id=c1; Path=/",), (b"dub_id=",))(
        ...     {"type": "http.response.start", "status": 200}))
        >>> sent[0]["headers"]
        [(b'set-cookie', b'dub_id=c1; Path=/')]

    If the app wrote the click cookie or its companion itself (for example clearing them after
    a lead), its decision stands and none of ours are added, so the two never disagree. Works
    on the raw header pairs: a ``MutableHeaders`` view costs more than the whole append.
    """

    __slots__ = ("cookies", "prefixes", "send")

    def __init__(self, send: Send, cookies: tuple[str, ...], prefixes: tuple[bytes, ...]) -> None:
        self.send = send
        self.cookies = cookies
        self.prefixes = prefixes

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers") or ()  # optional in ASGI, any iterable
            prefixes = self.prefixes
            for name, value in headers:
                if len(name) == 10 and name.lower() == b"set-cookie" and value.startswith(prefixes):
                    break
            else:
                message["headers"] = [
                    *headers,
                    *((b"set-cookie", cookie.encode("latin-1")) for cookie in self.cookies),
                ]
        await self.send(message)
