"""The header pairs of a response, read from its raw head only when someone asks.

A 2xx is read from its status and body alone, so the connection parses its answers without a
Python callback per header (one per header is what the parse cost most: a provider's answer
carries 5-20 of them). When the headers are wanted (a non-2xx answer's ``Retry-After`` or
``Location``, a body that ends at close, more header lines than the limit might allow), the
bytes received up to the end of the head are parsed again by the same parser, ``httptools``:
the pairs are exactly those it would have given the first time.
"""

from __future__ import annotations

import contextlib

import httptools

__all__ = ["header_pairs"]


class _Collector:
    """httptools callbacks that keep the header pairs of each message, and the most seen."""

    __slots__ = ("done", "headers", "most", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.most = 0
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:  # after the final head: trailers, not kept
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.most = max(self.most, len(self.headers))
        if self.parser.get_status_code() < 200:
            self.headers = []  # a 1xx answer's own headers: the real answer follows
        else:
            self.done = True


def header_pairs(received: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """The header pairs of the final (non-1xx) head in ``received``, the bytes of one
    response from its first (the parser accepted them once already); and the most headers
    any one head in it had.

    Example:
        >>> header_pairs(b"HTTP/1.1 100 Continue\\r\\nA: 1\\r\\n\\r\\nHTTP/1.1 429 Too Many"
        ...              b"\\r\\nRetry-After: 3\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        ([(b'Retry-After', b'3'), (b'Content-Length', b'2')], 2)
    """
    collector = _Collector()
    # What follows the head (a second answer, an upgrade) is not this head's business.
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        collector.parser.feed_data(received)
    return collector.headers, collector.most
