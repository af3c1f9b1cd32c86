"""The fake provider's ASGI app: routes, auth, faults, recording, and its control endpoints; the
providers' logic lives next door (:mod:`._ledger`, :mod:`._clicks`).

The control endpoints (``/_fake/*``) let another process read and steer the fake over HTTP;
they need no API key and are never faulted:

- ``GET /_fake/events``: the requests handled, the ones recorded, and those that met an
  injected fault (``faulted``: the fault and the status answered, ``None`` for a cut);
- ``GET``/``PUT /_fake/faults``: the :class:`~.Faults` in force;
- ``POST /_fake/reset``: forget events and state (faults stay);
- ``GET /_fake/clicks``, ``GET /_fake/customers``: what ``/track/click`` and leads created;
- ``GET``/``POST /_fake/links`` ``{"link": "DOMAIN/KEY=PARTNER"}`` (or ``{"domain", "key",
  "partner", "discount"}``): the partner links ``/track/click`` knows, and one more;
- ``POST /_fake/clock`` ``{"advance": seconds}``: step the clock of the dedup windows;
- ``POST /_fake/webhooks`` ``{"url", "event", "data"}``: send one signed webhook.

Example:
    >>> FakeProvider("dub", known_clicks={"c1"}).clicks()
    []
    >>> import asyncio
    >>> asyncio.run(control(FakeProvider(), "POST", "/_fake/reset", b""))
    (200, {'ok': True})
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, get_args

import anyio
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from ._bodies import BodyError, ProviderName, validate_body, validation_message
from ._clicks import CORS_HEADERS, Click, ClickBook, LinkSettings, SteppedClock, parse_link
from ._faults import (
    FAULT_STATUS,
    Faulted,
    FaultKind,
    FaultPlan,
    Faults,
    drop_connection,
    parse_faults,
    send_rate_limited,
)
from ._ledger import Answer, CommissionBook, Ledger
from ._ratelimit import RateLimit, SlidingWindow
from ._webhooks import SentWebhook, deliver_webhook
from ._wire import (
    INVALID_JSON,
    Received,
    Request,
    Route,
    bearer_problem,
    error_body,
    find_route,
    lifespan,
    parse_json,
    public_record,
    read_body,
    send_empty,
    send_json,
    send_not_found_page,
)

__all__ = ["Controlled", "FakeProvider", "Received", "control"]


class Controlled(Protocol):
    """What the control endpoints need of the fake (``FakeProvider`` has it all).

    Example:
        >>> from asgi_attribution.testing import FakeProvider
        >>> provider: Controlled = FakeProvider()
    """

    faults: Faults

    def events(self) -> dict[str, Any]: ...
    def reset(self) -> None: ...
    def clicks(self) -> list[Click]: ...
    def customers(self) -> list[dict[str, Any]]: ...
    def advance(self, seconds: float) -> None: ...
    def now(self) -> float: ...
    def links(self) -> list[dict[str, Any]]: ...
    def add_link(self, domain: str, key: str, settings: LinkSettings) -> None: ...
    async def send_webhook(self, url: str, event: str = ..., data: Any = ...) -> SentWebhook: ...


def _unprocessable(message: str) -> tuple[int, dict[str, Any]]:
    return 422, error_body("unprocessable_entity", message)


def _object(raw: bytes) -> dict[str, Any] | tuple[int, dict[str, Any]]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return 400, error_body("bad_request", "Request body is not valid JSON.")
    if not isinstance(data, dict):
        return _unprocessable("body: must be a JSON object")
    return data


async def control(
    fake: Controlled, method: str, path: str, raw: bytes
) -> tuple[int, dict[str, Any]]:
    """Answer one ``/_fake/*`` request: (status, JSON body).

    Example:
        >>> import asyncio
        >>> from asgi_attribution.testing import FakeProvider
        >>> asyncio.run(control(FakeProvider(), "GET", "/_fake/nothing", b""))[0]
        404
    """
    if method == "GET" and path == "/_fake/events":
        return 200, fake.events()
    if method == "GET" and path == "/_fake/faults":
        return 200, dataclasses.asdict(fake.faults)
    if method == "GET" and path == "/_fake/clicks":
        return 200, {"clicks": [dataclasses.asdict(c) for c in fake.clicks()]}
    if method == "GET" and path == "/_fake/customers":
        return 200, {"customers": fake.customers()}
    if method == "GET" and path == "/_fake/links":
        return 200, {"links": fake.links()}
    if method == "POST" and path == "/_fake/reset":
        fake.reset()
        return 200, {"ok": True}
    if method not in ("PUT", "POST") or path not in (
        "/_fake/faults",
        "/_fake/clock",
        "/_fake/webhooks",
        "/_fake/links",
    ):
        return 404, error_body("not_found", f"{method} {path} not found")
    data = _object(raw)
    if isinstance(data, tuple):
        return data
    if method == "PUT" and path == "/_fake/faults":
        try:
            faults = parse_faults(data)
        except ValidationError as exc:
            return _unprocessable(validation_message(exc))
        except ValueError as exc:
            return _unprocessable(str(exc))
        fake.faults = faults
        return 200, dataclasses.asdict(faults)
    if method == "POST" and path == "/_fake/links":
        return _add_link(fake, data)
    if method == "POST" and path == "/_fake/clock":
        seconds = data.get("advance", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _unprocessable("advance: must be a number of seconds >= 0")
        fake.advance(seconds)
        return 200, {"now": fake.now()}
    if method == "POST" and path == "/_fake/webhooks":
        url, event = data.get("url"), data.get("event", "sale.created")
        if not isinstance(url, str) or not isinstance(event, str):
            return _unprocessable("url: must be a string; event: must be a string")
        try:
            sent = await fake.send_webhook(url, event, data.get("data", {}))
        except ValueError as exc:
            return _unprocessable(str(exc))
        return 200, {"status": sent.status, "error": sent.error, "payload": sent.payload}
    return 404, error_body("not_found", f"{method} {path} not found")


def _add_link(fake: Controlled, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /_fake/links``: ``{"link": "DOMAIN/KEY=PARTNER"}`` or the fields one by one."""
    try:
        if "link" in data:
            if not isinstance(data["link"], str) or set(data) != {"link"}:
                raise ValueError('link: a string "DOMAIN/KEY" or "DOMAIN/KEY=PARTNER", alone')
            (domain, key), settings = parse_link(data["link"])
        else:
            given_domain, given_key = data.get("domain"), data.get("key")
            if not isinstance(given_domain, str) or not isinstance(given_key, str):
                raise ValueError('domain, key: strings (or "link": "DOMAIN/KEY")')
            unknown = set(data) - {"domain", "key", "partner", "discount", "url"}
            if unknown:
                raise ValueError(f"{', '.join(sorted(unknown))}: not a link field")
            (domain, key), settings = parse_link(f"{given_domain}/{given_key}")
            partner = data.get("partner")
            if isinstance(partner, str):  # a name, as on the command line
                partner = parse_link(f"{domain}/{key}={partner}")[1]["partner"]
            settings.update({k: v for k, v in data.items() if k in ("discount", "url") and v})
            if partner is not None:
                if not isinstance(partner, dict):
                    raise ValueError("partner: a name or an object with id and name")
                settings["partner"] = partner
    except ValueError as exc:
        return _unprocessable(str(exc))
    fake.add_link(domain, key, settings)
    return 200, {"domain": domain, "key": key, **settings}


class FakeProvider:
    """ASGI app speaking Dub's (or PIMMS') API as their servers behave, with fault injection.

    Routes: ``POST /track/lead``, ``POST /track/sale``, ``PATCH /customers/{id}``,
    ``POST /track/click``; for Dub also ``GET /commissions`` and ``PATCH /commissions/{id}``,
    and, with ``legacy_routes=True``, the ``POST /track/customer`` Dub removed in December 2024.
    Requests need ``Authorization: Bearer <token>`` (exactly ``api_key`` if given), except
    ``/track/click``. Bodies are checked like the real API (400 bad JSON, 422 naming the field;
    with ``strict``, unknown keys too). What each valid request does is :mod:`._ledger`'s: 200s
    that record nothing (a repeated lead, a sale without customer) are in ``requests`` only;
    ``accepted`` holds the recorded ones.

    Options: ``known_clicks`` (``None``: every well-formed id is a real click) plus the clicks
    made through ``/track/click`` on ``links`` (``{(domain, key): {"partner": ..., "discount":
    ...}}``) from ``allowed_hostnames`` (``None``: all); ``clock`` (Unix time, stepped with
    :meth:`advance`) for the 7-day windows; ``webhook_secret`` to sign webhooks and
    ``webhook_url`` to send ``lead.created``/``sale.created`` on each record; ``commissions``,
    ``commission_rate`` and ``commission_delay`` (seconds until a sale's commission shows).

    As Dub's server, not as we hope: ``disabled_clicks`` and ``foreign_clicks`` are clicks whose
    link is disabled or belongs to another workspace (404 with Dub's message, see also
    :meth:`disable_link`); ``program=False`` is a workspace without a partner program (the
    ``/commissions`` routes answer 404 "Program not found"); ``forbidden_routes`` refuse the key
    with 403 (a restricted key without that route's scope); :meth:`lock_payout` puts a sale's
    commission in a payout that can no longer change; ``lead_delay`` (seconds, 0 by default) is
    how long an ``async`` lead takes to show to sales (and, on PIMMS, its new customer), as the
    providers record it in the background (``wait`` leads show at once). Every error of a route
    carries the JSON envelope (``{"error": {"code", "message", "doc_url"}}``); a path with no
    route gets an HTML 404 page, as Next.js answers it. ``rate_limit`` (``"600/60s"`` or a
    :class:`RateLimit`) limits each API key as Dub does (:mod:`._ratelimit`): every answer of
    an API-key route carries the ``X-RateLimit-*`` headers, a request over the limit gets 429
    ``rate_limit_exceeded``; ``limiter.rejected`` counts those.

    Another process can read and steer it through ``/_fake/*`` (the control routes below).

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
        known_clicks: Collection[str] | None = None,
        links: Mapping[tuple[str, str], LinkSettings] | None = None,
        allowed_hostnames: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
        legacy_routes: bool = False,
        webhook_secret: str | None = None,
        webhook_url: str | None = None,
        commissions: bool = True,
        commission_rate: float = 0.1,
        commission_delay: float = 0.0,
        disabled_clicks: Collection[str] = (),
        foreign_clicks: Collection[str] = (),
        program: bool = True,
        forbidden_routes: Collection[Route] = (),
        lead_delay: float = 0.0,
        rate_limit: str | RateLimit | None = None,
    ) -> None:
        if provider not in get_args(ProviderName):
            raise ValueError(f"provider: must be 'dub' or 'pimms', got {provider!r}")
        if legacy_routes and provider != "dub":
            raise ValueError("legacy_routes: only Dub ever had POST /track/customer")
        if webhook_url is not None and not webhook_secret:
            raise ValueError("webhook_url: needs webhook_secret= to sign the webhooks")
        self.provider: ProviderName = provider
        self.api_key = api_key
        self.strict = strict
        self.legacy_routes = legacy_routes
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.program = program
        self.forbidden_routes = frozenset(forbidden_routes)
        self.requests: list[Received] = []
        self.accepted: list[Received] = []
        self.faulted: list[Faulted] = []  # tracking requests that met an injected fault
        # Tests read state from another thread while the server thread writes it.
        self._lock = threading.Lock()
        self._clock = SteppedClock(clock)
        self._clicks = ClickBook(
            provider,
            known_clicks=known_clicks,
            links=links,
            allowed_hostnames=allowed_hostnames,
            clock=self._clock,
        )
        self._commissions = CommissionBook(
            self._clock, delay=commission_delay, rate=commission_rate
        )
        with_commissions = commissions and provider == "dub"
        self._ledger = Ledger(
            provider,
            self._clicks,
            clock=self._clock,
            commissions=self._commissions if with_commissions else None,
            disabled_clicks=disabled_clicks,
            foreign_clicks=foreign_clicks,
            lead_delay=lead_delay,
        )
        self._webhooks: list[SentWebhook] = []
        self.faults = faults or Faults()
        if isinstance(rate_limit, str):
            rate_limit = RateLimit.parse(rate_limit)
        self.limiter = SlidingWindow(rate_limit) if rate_limit is not None else None

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
        return self._plan.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        with self._lock:
            self._plan = FaultPlan(faults)

    def now(self) -> float:
        """The fake's clock: ``clock()`` plus every :meth:`advance`.

        Example:
            >>> FakeProvider(clock=lambda: 100.0).now()
            100.0
        """
        return self._clock()

    def advance(self, seconds: float) -> None:
        """Step the fake's clock, e.g. past a 7-day dedup window or a commission delay.

        Example:
            >>> provider = FakeProvider(clock=lambda: 0.0)
            >>> provider.advance(7 * 86400); provider.now()
            604800.0
        """
        with self._lock:
            self._clock.advance(seconds)

    def links(self) -> list[dict[str, Any]]:
        """The links ``/track/click`` knows (``GET /_fake/links``), with their settings.

        Example:
            >>> FakeProvider(links={("go.acme.com", "john"): {}}).links()
            [{'domain': 'go.acme.com', 'key': 'john'}]
        """
        with self._lock:
            return [
                {"domain": domain, "key": key, **settings}
                for (domain, key), settings in self._clicks.links.items()
            ]

    def add_link(self, domain: str, key: str, settings: LinkSettings | None = None) -> None:
        """Let ``/track/click`` find the link ``domain/key`` (``settings``: partner, discount).

        Example:
            >>> provider = FakeProvider()
            >>> provider.add_link("go.acme.com", "john", {"partner": {"id": "pn_1", "name": "J"}})
            >>> provider.links()[0]["partner"]["name"]
            'J'
        """
        with self._lock:
            self._clicks.links[(domain, key)] = dict(settings or {})

    def disable_link(self, click_id: str) -> None:
        """Disable the link of ``click_id`` from now on (Dub then refuses its leads and sales).

        Example:
            >>> provider = FakeProvider()
            >>> provider.disable_link("c1")
        """
        with self._lock:
            self._ledger.disabled_clicks.add(click_id)

    def lock_payout(self, invoice_id: str, status: str = "processing") -> int:
        """Put the commission of the sale ``invoice_id`` in a payout of ``status`` (Dub then
        answers 400 "Its payout is already ..." to a change); how many commissions.

        Example:
            >>> FakeProvider().lock_payout("in_nope")
            0
        """
        with self._lock:
            return self._commissions.lock_payout(invoice_id, status)

    def leads(self) -> list[dict[str, Any]]:
        """Bodies of the recorded lead requests (deferred ones included), oldest first.

        Example:
            >>> FakeProvider().leads()
            []
        """
        return self._accepted_bodies("/track/lead")

    def sales(self) -> list[dict[str, Any]]:
        """Bodies of the recorded sale requests, oldest first.

        Example:
            >>> FakeProvider().sales()
            []
        """
        return self._accepted_bodies("/track/sale")

    def customers(self) -> list[dict[str, Any]]:
        """The customers that leads, direct sales and updates made, oldest first.

        Example:
            >>> FakeProvider().customers()
            []
        """
        with self._lock:
            return self._ledger.customers()

    def clicks(self) -> list[Click]:
        """The clicks recorded through ``POST /track/click`` (bots' are not), oldest first.

        Example:
            >>> FakeProvider().clicks()
            []
        """
        with self._lock:
            return self._clicks.clicks()

    def commissions(self, **query: str) -> list[dict[str, Any]]:
        """What ``GET /commissions`` would answer now (``invoiceId=``, ``status=`` filter).

        Example:
            >>> FakeProvider().commissions(invoiceId="in_1")
            []
        """
        with self._lock:
            return self._commissions.list(query)

    def webhooks(self) -> list[SentWebhook]:
        """The webhooks sent so far, oldest first.

        Example:
            >>> FakeProvider().webhooks()
            []
        """
        with self._lock:
            return list(self._webhooks)

    async def send_webhook(
        self, url: str, event: str = "sale.created", data: Any = None
    ) -> SentWebhook:
        """Send one webhook to ``url``, signed with ``webhook_secret`` as the provider signs it.

        Example:
            >>> import asyncio
            >>> asyncio.run(FakeProvider().send_webhook("http://127.0.0.1:9/hook"))
            Traceback (most recent call last):
            ...
            ValueError: webhook_secret: FakeProvider(webhook_secret="whsec_...") signs webhooks
        """
        if not self.webhook_secret:
            raise ValueError(
                'webhook_secret: FakeProvider(webhook_secret="whsec_...") signs webhooks'
            )
        payload = {} if data is None else data
        sent = await deliver_webhook(
            self.provider, url, event, payload, secret=self.webhook_secret, now=self.now()
        )
        with self._lock:
            self._webhooks.append(sent)
        return sent

    def events(self) -> dict[str, Any]:
        """The requests handled, the recorded ones and the faulted ones (``GET /_fake/events``).

        Example:
            >>> FakeProvider().events()
            {'accepted': [], 'requests': [], 'faulted': []}
        """
        with self._lock:
            accepted = [public_record(r) for r in self.accepted]
            requests = [public_record(r) for r in self.requests]
            faulted = [dataclasses.asdict(f) for f in self.faulted]
        return {"accepted": accepted, "requests": requests, "faulted": faulted}

    def count_by_idempotency_key(self) -> dict[str, int]:
        """How many requests per ``Idempotency-Key`` were answered 200 (recorded or not).

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
        """Forget requests, customers, clicks, dedup keys, commissions and sent webhooks.

        Restarts ``fail_first`` and the seeded draws; keeps the faults and the clock.

        Example:
            >>> provider = FakeProvider()
            >>> provider.reset()
            >>> provider.requests
            []
        """
        with self._lock:
            self.requests.clear()
            self.accepted.clear()
            self.faulted.clear()
            self._ledger.reset()
            self._clicks.reset()
            self._commissions.reset()
            self._webhooks.clear()
            self._plan = FaultPlan(self._plan.faults)
        if self.limiter is not None:
            self.limiter.reset()

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
        request = Request.from_scope(scope, body)
        method, path = request.method, request.path
        if path.startswith("/_fake/"):
            await send_json(send, *await control(self, method, path, body))
            return
        if method == "OPTIONS" and path == "/track/click":  # the browser's CORS preflight
            await send_empty(send, 204, CORS_HEADERS)
            return
        route = find_route(self.provider, method, path, legacy_routes=self.legacy_routes)
        if route is None:
            await send_not_found_page(send)  # no route handler: no envelope either
            return
        extra = CORS_HEADERS if route == "click" else []
        if self.limiter is not None and route != "click":
            stated = self._limited(request)
            if stated is not None:
                extra, allowed = stated
                if not allowed:
                    payload = error_body("rate_limit_exceeded", "Too many requests.")
                    await send_json(send, 429, payload, extra)
                    return

        fault, faults = self._draw_fault()
        if fault is not None and fault != "slow":
            self._note_fault(request, fault, FAULT_STATUS[fault])
        if fault == "error":
            message = "The provider is temporarily unavailable (injected fault)."
            await send_json(send, 503, error_body("internal_server_error", message), extra)
            return
        if fault == "rate_limit":
            await send_rate_limited(send, faults)
            return
        if fault == "drop":
            await drop_connection(send)
            return

        answer = self._handle(route, request)
        if fault == "slow":
            # Recorded already: a client that times out now cannot know the event landed.
            self._note_fault(request, fault, answer.status)
            await anyio.sleep(faults.slow_seconds)
        await send_json(send, answer.status, answer.payload, extra)
        if answer.webhook is not None and self.webhook_url is not None:
            # After the answer, as Dub's waitUntil: the caller never waits for the webhook.
            await self.send_webhook(self.webhook_url, *answer.webhook)

    def _limited(self, request: Request) -> tuple[list[tuple[str, str]], bool] | None:
        """The rate limit's headers and verdict for a request with a valid key (else None:
        Dub checks the key first)."""
        assert self.limiter is not None
        if bearer_problem(self.api_key, request.headers) is not None:
            return None
        allowed, headers = self.limiter.take(request.headers["authorization"])
        return list(headers.items()), allowed

    def _note_fault(self, request: Request, fault: FaultKind, status: int | None) -> None:
        key = request.headers.get("idempotency-key")
        with self._lock:
            self.faulted.append(Faulted(request.method, request.path, key, fault, status))

    def _draw_fault(self) -> tuple[FaultKind | None, Faults]:
        """Pick this request's fault, with the settings it was drawn from."""
        with self._lock:
            plan = self._plan
            return plan.draw(), plan.faults

    # -- handling -----------------------------------------------------------------------------

    def _handle(self, route: Route, request: Request) -> Answer:
        parsed = parse_json(request.raw, empty=None if route == "commissions" else INVALID_JSON)
        body = parsed if isinstance(parsed, dict) else None
        headers = request.headers
        with self._lock:
            answer = self._answer(route, request, parsed)
            key = headers.get("idempotency-key")
            received = Received(request.method, request.path, body, headers, key, answer.status)
            self.requests.append(received)
            if answer.recorded:
                self.accepted.append(received)
        return answer

    def _answer(self, route: Route, request: Request, parsed: Any) -> Answer:
        """Auth, then validation, then the provider's logic. Called under the lock."""
        path, headers = request.path, request.headers
        if route != "click" and (problem := bearer_problem(self.api_key, headers)) is not None:
            return Answer(401, error_body("unauthorized", problem))
        if route in self.forbidden_routes:
            message = (
                "The provided key does not have the required permissions for this endpoint on "
                f"the workspace 'ws_fake'. Having the '{route}s.write' permission would allow "
                "this request to continue."
            )
            return Answer(403, error_body("forbidden", message))
        if route in ("commissions", "commission") and not self.program:
            return Answer(404, error_body("not_found", "Program not found"))
        if parsed is INVALID_JSON:
            return Answer(400, error_body("bad_request", "Request body is not valid JSON."))
        if route == "click":
            status, payload, recorded = self._clicks.track(parsed, headers, request.ip)
            return Answer(status, payload, recorded=recorded)
        if route == "commissions":
            return Answer(200, self._commissions.list(request.query))
        if route == "commission":
            ref = path.removeprefix("/commissions/")
            status, payload = self._commissions.update(ref, parsed, strict=self.strict)
            return Answer(status, payload, recorded=status == 200)
        if route == "customer" and path == "/customers/ext_":
            message = "id: empty external id after ext_"
            return Answer(422, error_body("unprocessable_entity", message))
        try:
            fields = validate_body(self.provider, route, parsed, strict=self.strict)
        except BodyError as exc:
            return Answer(422, error_body("unprocessable_entity", str(exc)))
        if route == "lead":
            return self._ledger.lead(fields)
        if route == "sale":
            return self._ledger.sale(fields)
        if route == "customer":
            return self._ledger.update_customer(path.removeprefix("/customers/"), fields)
        return self._ledger.legacy_customer(fields)
