"""JSON as this package sends and stores it: compact UTF-8 bytes, and back.

orjson does both in a few thousand instructions; the standard library's encoder and decoder
cost 23,000 and 36,000 per event body and answer (``docs/performance.md``), on the web app's
own event loop. What orjson refuses (an integer beyond 64 bits) goes through the standard
library instead, so every value that encoded before still encodes, the same way. Values reach
here validated: a float that is not finite was refused at the call.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]


# Non-string keys (in metadata) become strings, as the standard library makes them.
_OPTIONS = orjson.OPT_NON_STR_KEYS

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8, non-ASCII characters left as they are.

    Example:
        >>> dumps({"eventName": "Café", "n": 2**70})
        b'{"eventName":"Caf\\xc3\\xa9","n":1180591620717411303424}'
    """
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # Beyond orjson (a big integer), or invalid anywhere (a lone surrogate: the standard
        # library raises its own error for it, as it always did).
        return _compact(value).encode()


def loads(data: bytes) -> Any:
    """The JSON document of an HTTP answer; ``ValueError`` if it is not JSON (or not UTF-8).

    For answers only: a number beyond 64 bits comes back as a float, as JavaScript reads it.
    Stored rows are read with the standard library, exactly as :func:`dumps` wrote them.

    Example:
        >>> loads(b'{"ok": true}')
        {'ok': True}
    """
    return orjson.loads(data)
