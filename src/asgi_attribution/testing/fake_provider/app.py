"""The fake provider's ASGI app: routes, recording, deduplication and the control endpoints."""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any, get_args

import anyio
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from .bodies import BodyError, Kind, ProviderName, validate_body, validation_message
from .faults import (
    FaultKind,
    FaultPlan,
    Faults,
    drop_connection,
    parse_faults,
    send_rate_limited,
)
from .wire import error_body, lifespan, read_body, request_headers, send_json

__all__ = ["FakeProvider", "Received"]


@dataclass(frozen=True)
class Received:
    """One request the fake handled, as recorded in ``FakeProvider.requests`` / ``.accepted``.

    ``body`` is the decoded JSON object (``None`` if the body was not a JSON object), ``headers``
    have lower-case names, ``idempotency_key`` comes from the ``Idempotency-Key`` header.

    Example:
        >>> from asgi_attribution.testing import Received
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


class FakeProvider:
    """ASGI app speaking Dub's (or PIMMS') tracking API, with recording and fault injection.

    Routes: ``POST /track/lead``, ``POST /track/sale``, ``PATCH /customers/{id}``; for Dub also
    the legacy ``POST /track/customer``. Requests need ``Authorization: Bearer <token>`` (exactly
    ``api_key`` if given). Bodies are checked like the real API: bad JSON is 400, a bad field is
    422 naming it, and with ``strict`` unknown keys are 422 too (``externalId`` sent to Dub).
    Leads are deduplicated per (customer external id, event name) and sales per ``invoiceId``:
    a duplicate answers 200 but is not recorded in ``accepted`` again.

    Another process can read and steer it through ``GET /_fake/events``, ``GET``/``PUT
    /_fake/faults`` and ``POST /_fake/reset``; these control endpoints are never faulted.

    Example:
        >>> from asgi_attribution.testing import FakeProvider, Faults
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
            >>> from asgi_attribution.testing import FakeProvider, Faults
            >>> provider = FakeProvider()
            >>> provider.faults = Faults(error_rate=1.0)
            >>> provider.faults.error_rate
            1.0
        """
        return self._plan.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._plan = FaultPlan(faults)

    def leads(self) -> list[dict[str, Any]]:
        """Bodies of the accepted (unique) lead events, oldest first.

        Example:
            >>> from asgi_attribution.testing import FakeProvider
            >>> FakeProvider().leads()
            []
        """
        return self._accepted_bodies("/track/lead")

    def sales(self) -> list[dict[str, Any]]:
        """Bodies of the accepted (unique) sale events, oldest first.

        Example:
            >>> from asgi_attribution.testing import FakeProvider
            >>> FakeProvider().sales()
            []
        """
        return self._accepted_bodies("/track/sale")

    def count_by_idempotency_key(self) -> dict[str, int]:
        """How many requests per ``Idempotency-Key`` were answered 200 (accepted + duplicates).

        A key seen more than once means the client retried, and the provider's dedup absorbed it.

        Example:
            >>> from asgi_attribution.testing import FakeProvider
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
            >>> from asgi_attribution.testing import FakeProvider
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
            self._plan = FaultPlan(self._plan.faults)

    def _accepted_bodies(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.accepted if r.path == path and r.body is not None]

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; the server closes the connection
        body = await read_body(receive)
        if body is None:
            return  # client went away while sending
        method: str = scope["method"]
        # The raw path keeps an escaped '/' inside a customer id as one segment, as Dub does.
        raw_path = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        headers = request_headers(scope)

        if path.startswith("/_fake/"):
            status, payload = self._control(method, path, body)
            await send_json(send, status, payload)
            return

        kind = self._route(method, path)
        if kind is None:
            await send_json(send, 404, error_body("not_found", f"{method} {path} not found"))
            return

        fault, faults = self._draw_fault()
        if fault == "error":
            message = "The provider is temporarily unavailable (injected fault)."
            await send_json(send, 503, error_body("internal_server_error", message))
            return
        if fault == "rate_limit":
            await send_rate_limited(send, faults)
            return
        if fault == "drop":
            await drop_connection(send)
            return

        status, payload = self._handle(kind, method, path, body, headers)
        if fault == "slow":
            # Recorded already: a client that times out now cannot know the event landed.
            await anyio.sleep(faults.slow_seconds)
        await send_json(send, status, payload)

    def _route(self, method: str, path: str) -> Kind | None:
        if method == "POST" and path == "/track/lead":
            return "lead"
        if method == "POST" and path == "/track/sale":
            return "sale"
        if self.provider == "dub" and method == "POST" and path == "/track/customer":
            return "legacy_customer"
        customer_id = path.removeprefix("/customers/")
        if method == "PATCH" and customer_id != path and customer_id and "/" not in customer_id:
            return "customer"
        return None

    def _draw_fault(self) -> tuple[FaultKind | None, Faults]:
        """Pick this request's fault, with the settings it was drawn from."""
        with self._lock:
            plan = self._plan
            return plan.draw(), plan.faults

    # -- tracking -----------------------------------------------------------------------------

    def _handle(
        self, kind: Kind, method: str, path: str, raw: bytes, headers: dict[str, str]
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
        self, kind: Kind, path: str, parsed: Any, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], tuple[str, ...] | None]:
        """Auth, then validation: (status, error body or validated fields, dedup key)."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return 401, error_body("unauthorized", "Missing Authorization: Bearer <api key>."), None
        if self.api_key is not None and not hmac.compare_digest(
            credential.encode(), self.api_key.encode()
        ):
            return 401, error_body("unauthorized", "Invalid API key."), None
        if parsed is _INVALID:
            return 400, error_body("bad_request", "Request body is not valid JSON."), None
        if kind == "customer" and path == "/customers/ext_":
            return 422, error_body("unprocessable_entity", "id: empty external id after ext_"), None
        try:
            fields = validate_body(self.provider, kind, parsed, strict=self.strict)
        except BodyError as exc:
            return 422, error_body("unprocessable_entity", str(exc)), None

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

    def _respond(self, kind: Kind, path: str, fields: dict[str, Any]) -> dict[str, Any]:
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
            return 200, dataclasses.asdict(self.faults)
        if method == "PUT" and path == "/_fake/faults":
            try:
                data = json.loads(raw or b"{}")
            except ValueError:
                return 400, error_body("bad_request", "Request body is not valid JSON.")
            if not isinstance(data, dict):
                message = "body: must be an object of Faults fields"
                return 422, error_body("unprocessable_entity", message)
            try:
                faults = parse_faults(data)
            except ValidationError as exc:
                return 422, error_body("unprocessable_entity", validation_message(exc))
            except ValueError as exc:
                return 422, error_body("unprocessable_entity", str(exc))
            self.faults = faults
            return 200, dataclasses.asdict(faults)
        if method == "POST" and path == "/_fake/reset":
            self.reset()
            return 200, {"ok": True}
        return 404, error_body("not_found", f"{method} {path} not found")


class _Invalid:
    """Marks a body that is not JSON (``None`` is valid JSON)."""


_INVALID = _Invalid()


def _public(received: Received) -> dict[str, Any]:
    item = dataclasses.asdict(received)
    # The control endpoint is unauthenticated; don't hand out the caller's API key.
    if "authorization" in item["headers"]:
        item["headers"]["authorization"] = "Bearer ***"
    return item
