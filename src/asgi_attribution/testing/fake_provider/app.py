"""A local, fault-injecting stand-in for Dub's and PIMMS' tracking APIs.

`FakeProvider` is an ASGI app that validates request bodies the way the real API does, records what
it accepted, and can be told to fail: 503s, 429s with a ``Retry-After`` header, slow answers and
dropped connections. Point a staging deployment at it, or run it under uvicorn in tests:

    provider = FakeProvider("dub", faults=Faults(error_rate=0.2, seed=1))
    with serve_in_thread(provider) as base_url:
        httpx.post(f"{base_url}/track/lead", json={...}, headers={"Authorization": "Bearer k"})
    assert provider.leads()[0]["eventName"] == "Sign up"

Another process can read and steer it through ``GET /_fake/events``, ``PUT /_fake/faults`` and
``POST /_fake/reset``; these control endpoints are never faulted.

From a shell: ``python -m asgi_attribution.fake_provider --provider pimms --error-rate 0.1``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.utils
import hmac
import itertools
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import anyio
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ConnectionDropped",
    "FakeProvider",
    "Faults",
    "Received",
    "main",
    "serve_in_thread",
]

ProviderName = Literal["dub", "pimms"]
RetryAfterForm = Literal["seconds", "http-date", "unix-ms"]

_logger = logging.getLogger(__name__)

# Both providers' specs carry this pattern for customer emails (it needs Python's `re`: lookaheads).
_EMAIL_RE = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
_METADATA_MAX_CHARS = 10_000
_RATE_FIELDS = ("error_rate", "rate_limit_rate", "drop_rate", "slow_rate")


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """Which failures the fake injects; the defaults inject none.

    Each tracking request gets at most one fault. ``fail_first`` is applied first and is
    deterministic; after it, one random draw per request picks error, rate limit, drop, slow or
    nothing, with the given probabilities (so their sum must not exceed 1).

    - ``error_rate``: answer 503 with Dub's error body; nothing is recorded.
    - ``rate_limit_rate``: answer 429 with a ``Retry-After`` header in the form ``retry_after``
      (``"unix-ms"`` is what Dub sends; ``None`` omits the header), pointing
      ``retry_after_seconds`` ahead.
    - ``slow_rate``: record the event, then wait ``slow_seconds`` before answering, so a client
      timeout leaves it unsure whether the event was delivered (it was).
    - ``drop_rate``: cut the connection mid-response; the client sees a transport error and
      nothing is recorded.
    - ``fail_first``: answer 503 to the first N tracking requests.
    - ``seed``: seed for the random draws, so a run can be replayed.

    Example:
        >>> Faults(rate_limit_rate=0.5, retry_after="seconds", seed=7).retry_after
        'seconds'
    """

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: RetryAfterForm | None = "unix-ms"
    retry_after_seconds: float = 1.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    drop_rate: float = 0.0
    fail_first: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1, got {value!r}")
        total = sum(getattr(self, name) for name in _RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"{', '.join(_RATE_FIELDS)}: must add up to at most 1, got {total}")
        if self.retry_after is not None and self.retry_after not in get_args(RetryAfterForm):
            raise ValueError(f"retry_after: must be one of {get_args(RetryAfterForm)} or None")
        for name in ("retry_after_seconds", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if self.fail_first < 0:
            raise ValueError("fail_first: must be >= 0")


@dataclass(frozen=True)
class Received:
    """One request the fake handled, as recorded in ``FakeProvider.requests`` / ``.accepted``.

    ``body`` is the decoded JSON object (``None`` if the body was not a JSON object), ``headers``
    have lower-case names, ``idempotency_key`` comes from the ``Idempotency-Key`` header.

    Example:
        >>> r = Received("POST", "/track/lead", {"eventName": "Sign up"}, {}, None, 200)
        >>> r.status
        200
    """

    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    idempotency_key: str | None
    status: int


class ConnectionDropped(Exception):
    """Raised by `FakeProvider` to cut a connection for the ``drop_rate`` fault.

    Under a server such as uvicorn this turns into a closed socket (uvicorn's traceback for it is
    filtered out). Called in-process through ``httpx.ASGITransport`` it reaches the caller as is.

    Example:
        >>> isinstance(ConnectionDropped("drop_rate fault"), Exception)
        True
    """


# --------------------------------------------------------------------------------------------------
# Request bodies, validated like the real APIs
# --------------------------------------------------------------------------------------------------


def _check_email(value: str) -> str:
    if not _EMAIL_RE.match(value):
        raise ValueError("not a valid email address")
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Dub measures JSON.stringify(metadata).length: compact JSON, counted in UTF-16 code units.
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-16-le")) // 2 > _METADATA_MAX_CHARS:
        raise ValueError(f"must be at most {_METADATA_MAX_CHARS} characters as JSON")
    return value


_Email = Annotated[str, Field(max_length=100), AfterValidator(_check_email)]
_Name = Annotated[str, Field(max_length=100)]
_ExternalId = Annotated[str, Field(min_length=1, max_length=100)]
_EventName = Annotated[str, Field(min_length=1, max_length=255)]
_Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
_Quantity = Annotated[int, Field(ge=1, le=100)]
_PaymentProcessor = Literal[
    "stripe", "shopify", "polar", "paddle", "apple", "revenuecat", "dub", "custom"
]


class _Body(BaseModel):
    # strict: JSON "100" is not an amount, as in the providers' zod schemas.
    model_config = ConfigDict(strict=True, extra="forbid")


class _CustomerFields(_Body):
    customerName: _Name | None = None
    customerEmail: _Email | None = None
    customerAvatar: str | None = None
    metadata: _Metadata | None = None


class _DubLead(_CustomerFields):
    clickId: str
    eventName: _EventName
    customerExternalId: _ExternalId
    mode: Literal["async", "wait", "deferred"] = "async"
    eventQuantity: _Quantity | None = None


class _PimmsLead(_CustomerFields):
    clickId: str
    eventName: _EventName
    externalId: _ExternalId
    mode: Literal["async", "wait"] = "async"
    eventQuantity: _Quantity | None = None


class _SaleFields(_CustomerFields):
    amount: Annotated[int, Field(ge=0, le=9007199254740991)]
    currency: str = "usd"
    eventName: Annotated[str, Field(max_length=255)] = "Purchase"
    paymentProcessor: _PaymentProcessor = "custom"
    invoiceId: str | None = None
    leadEventName: str | None = None
    clickId: str | None = None


class _DubSale(_SaleFields):
    customerExternalId: _ExternalId


class _PimmsSale(_SaleFields):
    externalId: _ExternalId


class _LegacyCustomer(_Body):
    customerId: _ExternalId
    customerName: _Name | None = None
    customerEmail: _Email | None = None
    customerAvatar: str | None = None


class _CustomerUpdate(_Body):
    email: _Email | None = None
    name: str | None = None
    avatar: str | None = None
    externalId: str | None = None
    stripeCustomerId: str | None = None
    country: str | None = None


_Kind = Literal["lead", "sale", "customer", "legacy_customer"]
_MODELS: dict[tuple[ProviderName, _Kind], type[_Body]] = {
    ("dub", "lead"): _DubLead,
    ("dub", "sale"): _DubSale,
    ("dub", "customer"): _CustomerUpdate,
    ("dub", "legacy_customer"): _LegacyCustomer,
    ("pimms", "lead"): _PimmsLead,
    ("pimms", "sale"): _PimmsSale,
}


def _error_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "body"
        # Our own validators' messages come as "Value error, <reason>"; keep just the reason.
        parts.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# --------------------------------------------------------------------------------------------------
# Dropping connections quietly
# --------------------------------------------------------------------------------------------------


class _DropLogFilter(logging.Filter):
    """Hides uvicorn's "Exception in ASGI application" record for deliberate drops only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def _quiet_server_logs() -> None:
    # Installed at the first drop, not at import or construction, so uvicorn's own logging set-up
    # has already run; the filter matches our exception type only, so real errors still show.
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropLogFilter) for f in logger.filters):
        logger.addFilter(_DropLogFilter())


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


_Fault = Literal["error", "rate_limit", "drop", "slow"]


class FakeProvider:
    """ASGI app speaking Dub's (or PIMMS') tracking API, with recording and fault injection.

    Routes: ``POST /track/lead``, ``POST /track/sale``; for Dub also ``PATCH /customers/{id}`` and
    the legacy ``POST /track/customer``. Requests need ``Authorization: Bearer <token>`` (exactly
    ``api_key`` if given). Bodies are checked like the real API: bad JSON is 400, a bad field is
    422 naming it, and with ``strict`` unknown keys are 422 too (``externalId`` sent to Dub).
    Leads are deduplicated per (customer external id, event name) and sales per ``invoiceId``:
    a duplicate answers 200 but is not recorded in ``accepted`` again.

    Example:
        >>> provider = FakeProvider("pimms", api_key="test", faults=Faults(fail_first=1))
        >>> provider.accepted, provider.leads()
        ([], [])
    """

    def __init__(
        self,
        provider: ProviderName = "dub",
        *,
        faults: Faults | None = None,
        api_key: str | None = None,
        strict: bool = True,
    ) -> None:
        if provider not in get_args(ProviderName):
            raise ValueError(f"provider: must be 'dub' or 'pimms', got {provider!r}")
        self.provider: ProviderName = provider
        self.api_key = api_key
        self.strict = strict
        self.requests: list[Received] = []
        self.accepted: list[Received] = []
        # Tests read state from another thread while the server thread writes it.
        self._lock = threading.Lock()
        # Dedup keys (leads: external id + event name; sales: invoice id) -> first answer.
        self._seen: dict[tuple[str, ...], dict[str, Any]] = {}
        self._customer_ids: dict[str, str] = {}
        self._customer_counter = itertools.count(1)
        self.faults = faults or Faults()

    # -- configuration and inspection -------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The faults in force. Assigning new ones restarts ``fail_first`` and the seeded draws.

        Example:
            >>> provider = FakeProvider()
            >>> provider.faults = Faults(error_rate=1.0)
            >>> provider.faults.error_rate
            1.0
        """
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._tracking_requests = 0

    def leads(self) -> list[dict[str, Any]]:
        """Bodies of the accepted (unique) lead events, oldest first.

        Example:
            >>> FakeProvider().leads()
            []
        """
        return self._accepted_bodies("/track/lead")

    def sales(self) -> list[dict[str, Any]]:
        """Bodies of the accepted (unique) sale events, oldest first.

        Example:
            >>> FakeProvider().sales()
            []
        """
        return self._accepted_bodies("/track/sale")

    def count_by_idempotency_key(self) -> dict[str, int]:
        """How many requests per ``Idempotency-Key`` were answered 200 (accepted + duplicates).

        A key seen more than once means the client retried, and the provider's dedup absorbed it.

        Example:
            >>> FakeProvider().count_by_idempotency_key()
            {}
        """
        counts: dict[str, int] = {}
        with self._lock:
            for request in self.requests:
                if request.idempotency_key is not None and request.status == 200:
                    key = request.idempotency_key
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def reset(self) -> None:
        """Forget recorded requests and dedup state; restart ``fail_first`` and the seeded draws.

        Example:
            >>> provider = FakeProvider()
            >>> provider.reset()
            >>> provider.requests
            []
        """
        with self._lock:
            self.requests.clear()
            self.accepted.clear()
            self._seen.clear()
            self._customer_ids.clear()
            self._customer_counter = itertools.count(1)
        self.faults = self._faults

    def _accepted_bodies(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.accepted if r.path == path and r.body is not None]

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; the server closes the connection
        body = await _read_body(receive)
        if body is None:
            return  # client went away while sending
        method: str = scope["method"]
        # The raw path keeps an escaped '/' inside a customer id as one segment, as Dub does.
        raw_path = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        headers = _headers(scope)

        if path.startswith("/_fake/"):
            status, payload = self._control(method, path, body)
            await _send_json(send, status, payload)
            return

        kind = self._route(method, path)
        if kind is None:
            await _send_json(send, 404, _error("not_found", f"{method} {path} not found"))
            return

        fault, faults = self._draw_fault()
        if fault == "error":
            message = "The provider is temporarily unavailable (injected fault)."
            await _send_json(send, 503, _error("internal_server_error", message))
            return
        if fault == "rate_limit":
            await _rate_limited(send, faults)
            return
        if fault == "drop":
            await _drop(send)
            return

        status, payload = self._handle(kind, method, path, body, headers)
        if fault == "slow":
            # Recorded already: a client that times out now cannot know the event landed.
            await anyio.sleep(faults.slow_seconds)
        await _send_json(send, status, payload)

    def _route(self, method: str, path: str) -> _Kind | None:
        if method == "POST" and path == "/track/lead":
            return "lead"
        if method == "POST" and path == "/track/sale":
            return "sale"
        if self.provider == "dub":
            if method == "POST" and path == "/track/customer":
                return "legacy_customer"
            customer_id = path.removeprefix("/customers/")
            if method == "PATCH" and customer_id != path and customer_id and "/" not in customer_id:
                return "customer"
        return None

    def _draw_fault(self) -> tuple[_Fault | None, Faults]:
        """Pick this request's fault, with the settings it was drawn from."""
        with self._lock:
            faults = self._faults
            self._tracking_requests += 1
            if self._tracking_requests <= faults.fail_first:
                return "error", faults
            # One draw per request: at most one fault, and a seed replays the same sequence.
            draw = self._rng.random()
        bound = 0.0
        choices: tuple[tuple[_Fault, float], ...] = (
            ("error", faults.error_rate),
            ("rate_limit", faults.rate_limit_rate),
            ("drop", faults.drop_rate),
            ("slow", faults.slow_rate),
        )
        for fault, rate in choices:
            bound += rate
            if draw < bound:
                return fault, faults
        return None, faults

    # -- tracking -----------------------------------------------------------------------------

    def _handle(
        self, kind: _Kind, method: str, path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = _INVALID
        body = parsed if isinstance(parsed, dict) else None

        status, payload, dedup_key = self._check(kind, path, parsed, headers)
        received = Received(method, path, body, headers, headers.get("idempotency-key"), status)
        with self._lock:
            self.requests.append(received)
            if status != 200:
                return status, payload
            if dedup_key is not None and dedup_key in self._seen:
                # Duplicate: the provider answers as before but records nothing new.
                return 200, self._seen[dedup_key]
            self.accepted.append(received)
            payload = self._respond(kind, path, payload)
            if dedup_key is not None:
                self._seen[dedup_key] = payload
            return 200, payload

    def _check(
        self, kind: _Kind, path: str, parsed: Any, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], tuple[str, ...] | None]:
        """Auth, then validation: (status, error body or validated fields, dedup key)."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return 401, _error("unauthorized", "Missing Authorization: Bearer <api key>."), None
        if self.api_key is not None and not hmac.compare_digest(
            credential.encode(), self.api_key.encode()
        ):
            return 401, _error("unauthorized", "Invalid API key."), None
        if parsed is _INVALID:
            return 400, _error("bad_request", "Request body is not valid JSON."), None
        if kind == "customer" and path == "/customers/ext_":
            return 422, _error("unprocessable_entity", "id: empty external id after ext_"), None

        model = _MODELS[(self.provider, kind)]
        data = parsed
        if not self.strict and isinstance(parsed, dict):
            data = {k: v for k, v in parsed.items() if k in model.model_fields}
        try:
            fields = model.model_validate(data).model_dump()
        except ValidationError as exc:
            return 422, _error("unprocessable_entity", _error_message(exc)), None

        if kind == "lead":
            external_id = fields.get("customerExternalId") or fields["externalId"]
            # A deferred lead is a separate step from the later real one (Dub's two-call flow).
            deferred = "deferred" if fields["mode"] == "deferred" else ""
            return 200, fields, ("lead", external_id, fields["eventName"], deferred)
        if kind == "sale" and fields["invoiceId"] is not None:
            return 200, fields, ("sale", fields["invoiceId"])
        return 200, fields, None

    def _customer_id(self, external_id: str | None) -> str:
        if external_id is None:
            return f"cus_fake{next(self._customer_counter):012d}"
        if external_id not in self._customer_ids:
            self._customer_ids[external_id] = f"cus_fake{next(self._customer_counter):012d}"
        return self._customer_ids[external_id]

    def _respond(self, kind: _Kind, path: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A success body shaped like the provider's, built from the validated fields."""
        if kind == "legacy_customer":
            return fields
        if kind == "customer":
            ref = path.removeprefix("/customers/")
            external_id = ref.removeprefix("ext_") if ref.startswith("ext_") else None
            external_id = fields["externalId"] or external_id
            customer_id = ref if external_id is None else self._customer_id(external_id)
            return {**fields, "id": customer_id, "externalId": external_id}
        external_id = fields.get("customerExternalId") or fields.get("externalId")
        customer = {
            "name": fields["customerName"],
            "email": fields["customerEmail"],
            "avatar": fields["customerAvatar"],
            "externalId": external_id,
        }
        if kind == "lead":
            return {"click": {"id": fields["clickId"]}, "link": None, "customer": customer}
        sale_keys = ("amount", "currency", "paymentProcessor", "invoiceId", "metadata")
        return {
            "eventName": fields["eventName"],
            "customer": {"id": self._customer_id(external_id), **customer},
            "sale": {k: fields[k] for k in sale_keys},
        }

    # -- control endpoints --------------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/_fake/events":
            with self._lock:
                accepted = [_public(r) for r in self.accepted]
                requests = [_public(r) for r in self.requests]
            return 200, {"accepted": accepted, "requests": requests}
        if method == "GET" and path == "/_fake/faults":
            return 200, dataclasses.asdict(self._faults)
        if method == "PUT" and path == "/_fake/faults":
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                return 400, _error("bad_request", "Request body is not valid JSON.")
            if not isinstance(data, dict):
                return 422, _error(
                    "unprocessable_entity", "body: must be an object of Faults fields"
                )
            try:
                faults = _parse_faults(data)
            except ValidationError as exc:
                return 422, _error("unprocessable_entity", _error_message(exc))
            except ValueError as exc:
                return 422, _error("unprocessable_entity", str(exc))
            self.faults = faults
            return 200, dataclasses.asdict(faults)
        if method == "POST" and path == "/_fake/reset":
            self.reset()
            return 200, {"ok": True}
        return 404, _error("not_found", f"{method} {path} not found")


class _Invalid:
    """Marks a body that is not JSON (``None`` is valid JSON)."""


_INVALID = _Invalid()


def _parse_faults(data: dict[str, Any]) -> Faults:
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a Faults field (known: {', '.join(sorted(known))})")
    faults: Faults = TypeAdapter(Faults).validate_python(data)
    return faults


def _public(received: Received) -> dict[str, Any]:
    item = dataclasses.asdict(received)
    # The control endpoint is unauthenticated; don't hand out the caller's API key.
    if "authorization" in item["headers"]:
        item["headers"]["authorization"] = "Bearer ***"
    return item


async def _rate_limited(send: Send, faults: Faults) -> None:
    headers: list[tuple[str, str]] = []
    if faults.retry_after is not None:
        headers.append(("retry-after", _retry_after(faults.retry_after, faults)))
    payload = _error("rate_limit_exceeded", "Too many requests (injected fault).")
    await _send_json(send, 429, payload, headers)


def _retry_after(form: RetryAfterForm, faults: Faults) -> str:
    at = time.time() + faults.retry_after_seconds
    if form == "seconds":
        return str(math.ceil(faults.retry_after_seconds))  # delta-seconds is an integer
    if form == "http-date":
        return email.utils.formatdate(math.ceil(at), usegmt=True)
    return str(int(at * 1000))  # Dub: Unix timestamp in milliseconds


# --------------------------------------------------------------------------------------------------
# ASGI plumbing
# --------------------------------------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Promise a body, send a piece of it, then fail: the server closes the socket mid-body.

    An ASGI app cannot close a socket itself. A server closes it when the app raises after the
    response started (before that, it would answer 500 instead), so the client's read of the
    declared Content-Length fails with a transport error (httpx.RemoteProtocolError).
    """
    _quiet_server_logs()
    _logger.debug("dropping connection (injected fault)")
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": b'{"', "more_body": True})
    raise ConnectionDropped("connection dropped (injected drop_rate fault)")


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server in a background thread; yield its base URL.

    ``port=0`` picks a free port. Exiting the block stops the server and joins the thread.
    Uvicorn's logging config is left alone (its records propagate to the root logger).

    Example:
        >>> with serve_in_thread(FakeProvider()) as base_url:  # doctest: +SKIP
        ...     httpx.get(f"{base_url}/_fake/events").json()
        {'accepted': [], 'requests': []}
    """
    import uvicorn  # lazily: uvicorn is a test/extra dependency

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Binding here, not in uvicorn, tells us the real port before the server starts.
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="auto",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="serve_in_thread", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start; see its log records")
            time.sleep(0.005)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5.0)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: run the fake provider in the foreground under uvicorn.

    Example:
        >>> main(["--provider", "pimms", "--port", "8787", "--error-rate", "0.1"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(
        prog="asgi-attribution fake-provider",
        description="Run a local Dub/PIMMS tracking API that can inject faults.",
    )
    parser.add_argument("--provider", choices=get_args(ProviderName), default="dub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--api-key", default=None, help="require exactly this Bearer token")
    parser.add_argument("--lenient", action="store_true", help="ignore unknown body keys")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 503 answers")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of 429s")
    parser.add_argument(
        "--retry-after",
        choices=[*get_args(RetryAfterForm), "none"],
        default="unix-ms",
        help="Retry-After form on 429 (Dub sends unix-ms)",
    )
    parser.add_argument("--retry-after-seconds", type=float, default=1.0)
    parser.add_argument("--slow-rate", type=float, default=0.0, help="share of slow answers")
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of cut connections")
    parser.add_argument("--fail-first", type=int, default=0, help="503 the first N requests")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    try:
        faults = Faults(
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            retry_after=None if args.retry_after == "none" else args.retry_after,
            retry_after_seconds=args.retry_after_seconds,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            drop_rate=args.drop_rate,
            fail_first=args.fail_first,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    app = FakeProvider(args.provider, faults=faults, api_key=args.api_key, strict=not args.lenient)

    import uvicorn  # lazily: uvicorn is a test/extra dependency

    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
