"""The providers' limits and vocabularies, stated once.

The event models, the provider dialects and the fake provider all read these, so what we refuse
locally is what the provider would refuse, measured the way the provider measures it. Dub (and
PIMMS, its fork) validate with zod in JavaScript: string lengths are UTF-16 code units, and the
metadata limit is ``JSON.stringify(metadata).length`` (compact, non-ASCII left as is).

Example:
    >>> js_length("é"), js_length("😀")
    (1, 2)
    >>> json_js_length({"note": "é" * 3000})
    3011
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AVATAR_DATA_PATTERN",
    "CLICK_ID_PATTERN",
    "DUB_PAYMENT_PROCESSORS",
    "EMAIL_MAX_LENGTH",
    "EMAIL_PATTERN",
    "EVENT_NAME_MAX_LENGTH",
    "EVENT_QUANTITY_RANGE",
    "EXTERNAL_ID_MAX_LENGTH",
    "INVOICE_ID_MAX_LENGTH",
    "MAX_SAFE_INTEGER",
    "METADATA_MAX_LENGTH",
    "NAME_MAX_LENGTH",
    "PIMMS_PAYMENT_PROCESSORS",
    "js_length",
    "json_js_length",
]


#: Dub's customer email pattern, from its OpenAPI spec (look-aheads: needs Python's ``re``).
EMAIL_PATTERN = (
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]"
    r"@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)

#: A ``customerAvatar`` on the track routes that is no URL: bare base64, or a
#: ``data:image/...;base64,...`` URI (Dub's storage uploads these, and drops any other string).
AVATAR_DATA_PATTERN = (
    r"^(?:data:image/[a-zA-Z0-9.+-]+;base64,)?"
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
)

#: Click ids are the providers' own short ids; anything else never came from a provider.
CLICK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

EVENT_NAME_MAX_LENGTH = 255

EXTERNAL_ID_MAX_LENGTH = 100

NAME_MAX_LENGTH = 100

EMAIL_MAX_LENGTH = 100

INVOICE_ID_MAX_LENGTH = 255

#: ``eventQuantity`` is an integer from 1 to 100 on Dub (not in the published spec).
EVENT_QUANTITY_RANGE = (1, 100)

#: ``JSON.stringify(metadata).length`` must not exceed this.
METADATA_MAX_LENGTH = 10_000

#: JavaScript's ``Number.MAX_SAFE_INTEGER``: the largest amount the providers can hold exactly.
MAX_SAFE_INTEGER = 9_007_199_254_740_991

DUB_PAYMENT_PROCESSORS = (
    "stripe",
    "shopify",
    "polar",
    "paddle",
    "apple",
    "revenuecat",
    "dub",
    "custom",
)

PIMMS_PAYMENT_PROCESSORS = ("stripe", "shopify", "polar", "paddle", "paypal", "custom")


def js_length(text: str) -> int:
    """``text.length`` in JavaScript: UTF-16 code units (an emoji counts 2).

    Example:
        >>> js_length("abc")
        3
    """
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def json_js_length(value: Any) -> int:
    """``JSON.stringify(value).length``; ``ValueError`` if ``value`` is not plain JSON.

    Example:
        >>> json_js_length({"a": [1, 2]})
        11
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable ({exc})") from None
    return js_length(text)
