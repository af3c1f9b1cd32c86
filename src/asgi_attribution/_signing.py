"""Signing what the server vouches for: the click id of the companion cookie, and the
round-trip tokens that carry a click through a flow that loses the cookies (OAuth callbacks).

The same signer, under another salt, signs the touchpoints cookie.

The plain click cookie is readable and writable by any script on the site (the providers'
scripts need that). The companion cookie is HttpOnly and signed with the app's secret: it says
"this server saw click id X arrive in a landing URL at time T". A bad, expired or foreign
signature simply means "not verified", never an error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from itsdangerous import (
    BadData,
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
)

__all__ = ["MAX_STATE_TOKEN", "ClickSigner", "StateTokens"]


logger = logging.getLogger("asgi_attribution")

# A click id (64) + timestamp + SHA-256 signature fits in far less; longer is never ours.
_MAX_TOKEN = 200


class _Signer(TimestampSigner):
    clock: Callable[[], float] = time.time

    def get_timestamp(self) -> int:
        return int(self.clock())


class ClickSigner:
    """Signs a click id with its capture time; checks a token against a click id and max age.

    ``secrets`` is one secret or a list: the first signs, all verify (rotate by putting the
    new secret first and dropping the old one after ``max_age``). ``salt`` separates tokens of
    different providers or apps using the same secret. ``clock`` exists for tests.

    Example:
        >>> signer = ClickSigner(["new secret", "old secret"], max_age=3600)
        >>> token = signer.sign("cm3abc")
        >>> signer.verify(token, "cm3abc"), signer.verify(token, "other")
        (True, False)
    """

    __slots__ = ("_signer", "max_age")

    def __init__(
        self,
        secrets: str | bytes | Sequence[str | bytes],
        *,
        max_age: int,
        salt: str = "asgi-attribution.click",
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
        if not keys or not all(keys):
            raise ValueError("signing_secrets must be one or more non-empty secrets")
        if max_age < 0:
            raise ValueError(f"verified_max_age must be >= 0 seconds, got {max_age}")
        self.max_age = max_age
        # itsdangerous signs with the last key and verifies with all; ours signs with the first.
        keys_bytes = [k.encode() if isinstance(k, str) else k for k in reversed(keys)]
        self._signer = _Signer(keys_bytes, salt=salt, digest_method=hashlib.sha256)
        self._signer.clock = clock

    def __repr__(self) -> str:
        # Never show the secrets.
        return f"ClickSigner(max_age={self.max_age})"

    def sign(self, click_id: str) -> str:
        """A token ``<click id>.<timestamp>.<signature>`` (cookie-safe characters only)."""
        return self._signer.sign(click_id).decode("ascii")

    def verify(self, token: str | None, click_id: str | None) -> bool:
        """True when ``token`` is our valid, unexpired signature of exactly ``click_id``."""
        if not token or not click_id:
            return False
        signed = self.unsign(token)
        if signed is None:
            return False
        if signed != click_id:
            logger.debug("ignored signed click cookie: it vouches for another click id")
            return False
        return True

    def unsign(
        self, token: str, *, limit: int = _MAX_TOKEN, what: str = "signed click cookie"
    ) -> str | None:
        """The value ``token`` signs, when it is ours, unexpired and at most ``limit`` long
        (else ``None``, logged at debug level as ``what``).

        Example:
            >>> signer = ClickSigner("secret", max_age=60)
            >>> signer.unsign(signer.sign("abc")), signer.unsign("abc.x.y")
            ('abc', None)
        """
        if len(token) > limit:
            logger.debug("ignored %s: too long (%d characters)", what, len(token))
            return None
        try:
            signed = self._signer.unsign(token, max_age=self.max_age)
        except BadSignature as exc:  # tampered, expired, foreign secret or garbage
            logger.debug("ignored %s: %s", what, type(exc).__name__)
            return None
        return signed.decode("utf-8", "replace")


# OAuth `state` values and query parameters stay short: providers cap them (Apple: 512 bytes
# of query in practice), so the whole token must fit.
MAX_STATE_TOKEN = 512


class StateTokens:
    """Signed round-trip tokens: a request's click (and partner data) carried through a flow
    that loses the cookies, such as an OAuth redirect ending in a cross-site ``form_post``.

    A token is itsdangerous' URL-safe timed serializer (compact JSON, zlib when it helps,
    SHA-256 HMAC with the first secret; all secrets verify), at most :data:`MAX_STATE_TOKEN`
    characters. Its payload is a JSON object of short keys: ``c`` the click id, ``v`` whether the
    server verified it, ``p`` the raw partner cookie. One more field (the touchpoints, ``t``)
    is one more key in :meth:`dumps`' ``fields``: readers ignore keys they do not know.
    :meth:`loads` never raises: a bad, expired, foreign or oversized token is ``None``, with
    a WARNING saying why.

    Example:
        >>> tokens = StateTokens(["new secret", "old secret"], salt="asgi-attribution.state.dub")
        >>> token = tokens.dumps({"c": "cm3abc", "v": True})
        >>> tokens.loads(token, max_age=3600)
        {'c': 'cm3abc', 'v': True}
        >>> tokens.loads(token[:-2] + "xx", max_age=3600) is None
        True
    """

    __slots__ = ("_serializer",)

    def __init__(
        self,
        secrets: str | bytes | Sequence[str | bytes],
        *,
        salt: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
        if not keys or not all(keys):
            raise ValueError("signing_secrets must be one or more non-empty secrets")
        # itsdangerous signs with the last key and verifies with all; ours signs with the first.
        keys_bytes = [k.encode() if isinstance(k, str) else k for k in reversed(keys)]

        class _Clocked(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        self._serializer = URLSafeTimedSerializer(
            keys_bytes,
            salt=salt,
            signer=_Clocked,
            signer_kwargs={"digest_method": hashlib.sha256},
        )

    def __repr__(self) -> str:
        return "StateTokens()"  # never show the secrets

    def dumps(self, fields: dict[str, Any]) -> str:
        """The signed token of ``fields`` (JSON-able values)."""
        token = self._serializer.dumps(fields)
        return token if isinstance(token, str) else token.decode("ascii")

    def loads(self, token: object, *, max_age: int) -> dict[str, Any] | None:
        """The fields of ``token`` if it is ours, intact and at most ``max_age`` seconds old."""
        if not isinstance(token, str) or not token:
            logger.warning(
                "attribution state ignored: expected a token string, got %s", type(token).__name__
            )
            return None
        if len(token) > MAX_STATE_TOKEN:
            logger.warning(
                "attribution state ignored: %d characters, more than a token ever has (%d)",
                len(token),
                MAX_STATE_TOKEN,
            )
            return None
        try:
            fields = self._serializer.loads(token, max_age=max_age)
        except SignatureExpired as exc:
            logger.warning("attribution state ignored: expired (%s)", exc)
            return None
        except BadData as exc:  # tampered, foreign secret or salt, garbage
            logger.warning("attribution state ignored: not a valid token (%s)", type(exc).__name__)
            return None
        if not isinstance(fields, dict):
            logger.warning("attribution state ignored: its payload is not an object")
            return None
        return fields
