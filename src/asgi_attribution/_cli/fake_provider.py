"""``asgi-attribution fake-provider``: the fake Dub/PIMMS API in the foreground, under uvicorn."""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Sequence
from typing import get_args

from ..testing.fake_provider import FakeProvider, Faults, ProviderName, RateLimit, RetryAfterForm
from ..testing.fake_provider._clicks import parse_link
from ..testing.fake_provider._wire import Route
from .common import CommandParser, exit_codes, port, wrap

__all__ = ["banner", "check_listen", "main"]


DESCRIPTION = wrap(
    "Run a local Dub/PIMMS tracking API that can inject faults (503s, 429s with Retry-After, "
    "slow answers, cut connections), to try a deployment's delivery and retries without the "
    "real provider. Recorded requests, and the faults injected, are at GET /_fake/events; "
    "--link registers a partner link for ?via= landings (or POST /_fake/links later). "
    "Stop it with Ctrl-C."
)

# The routes a key can be refused (403) with --forbid.
_FORBIDDABLE = ("lead", "sale", "customer", "click", "commissions", "commission")


def banner(fake: FakeProvider, url: str) -> str:
    """What the fake serves, printed at startup: its URL, key, faults, links and endpoints.

    Example:
        >>> fake = FakeProvider("dub", api_key="k", faults=Faults(error_rate=0.1))
        >>> fake.add_link("go.acme.com", "john", {"partner": {"id": "pn_j", "name": "John"}})
        >>> print(banner(fake, "http://127.0.0.1:8787"))  # doctest: +ELLIPSIS
        fake dub API at http://127.0.0.1:8787
          API key:   k (Authorization: Bearer k)
          faults:    error_rate=0.1
          links:     go.acme.com/john (partner John)
          endpoints: POST /track/lead, POST /track/sale, ...
          control:   GET /_fake/events, GET|PUT /_fake/faults, ...
    """
    key = fake.api_key
    shown_key = f"{key} (Authorization: Bearer {key})" if key else "any Bearer token"
    defaults = Faults()
    changed = [
        f"{f.name}={getattr(fake.faults, f.name)}"
        for f in dataclasses.fields(Faults)
        if getattr(fake.faults, f.name) != getattr(defaults, f.name)
    ]
    links = [
        f"{link['domain']}/{link['key']}"
        + (f" (partner {link['partner'].get('name')})" if link.get("partner") else "")
        for link in fake.links()
    ]
    routes = "POST /track/lead, POST /track/sale, PATCH /customers/{id}, POST /track/click"
    if fake.provider == "dub":
        routes += ", GET /commissions, PATCH /commissions/{id}"
    control = (
        "GET /_fake/events, GET|PUT /_fake/faults, GET|POST /_fake/links, GET /_fake/clicks, "
        "GET /_fake/customers, POST /_fake/reset, POST /_fake/clock, POST /_fake/webhooks"
    )
    return "\n".join(
        [
            f"fake {fake.provider} API at {url}",
            f"  API key:   {shown_key}",
            f"  faults:    {', '.join(changed) or 'none'}",
            f"  links:     {', '.join(links) or 'none (every ?via= landing gets 404; use --link)'}",
            f"  endpoints: {routes}",
            f"  control:   {control}",
        ]
    )


def check_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None if it can (checked by binding it once).

    Example:
        >>> check_listen("127.0.0.1", 0) is None
        True
        >>> with socket.create_server(("127.0.0.1", 0)) as taken:
        ...     busy = taken.getsockname()[1]
        ...     check_listen("127.0.0.1", busy) == f"cannot listen on 127.0.0.1:{busy}: " + (
        ...         "Address already in use")
        True
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # As uvicorn does: a port in TIME_WAIT is usable, one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"cannot listen on {host}:{port}: {reason}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the fake provider in the foreground under uvicorn.

    A usage error (a bad option, a port that is taken) is one line on stderr and
    ``SystemExit(2)``.

    Example:
        >>> main(["--provider", "pimms", "--port", "8787", "--error-rate", "0.1"])  # doctest: +SKIP
    """
    parser = CommandParser(
        prog="asgi-attribution fake-provider",
        description=DESCRIPTION,
        epilog=exit_codes(
            "the server stopped with an error",
            usage="usage error (a bad option, a port that cannot be listened on)",
        ),
    )
    parser.add_argument("--provider", choices=get_args(ProviderName), default="dub")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=port, default=8787, help="port to listen on (default: %(default)s)"
    )
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
    parser.add_argument(
        "--rate-limit",
        default=None,
        metavar="REQUESTS/WINDOW",
        help="limit each API key as Dub does, e.g. 600/60s (X-RateLimit-* headers, 429s)",
    )
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="DOMAIN/KEY[=PARTNER]",
        help="a link /track/click knows, e.g. go.acme.com/john=John Doe (a partner's); repeatable",
    )
    parser.add_argument(
        "--lead-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="how long an async lead takes to show to sales, as the providers record it later",
    )
    parser.add_argument(
        "--disabled-click",
        action="append",
        default=[],
        metavar="CLICK_ID",
        help="a click whose link is disabled (404 as Dub answers); repeatable",
    )
    parser.add_argument(
        "--no-program",
        action="store_true",
        help="a workspace without a partner program (/commissions answer 404)",
    )
    parser.add_argument(
        "--forbid",
        action="append",
        default=[],
        choices=_FORBIDDABLE,
        help="refuse the key on this route with 403 (a key without its scope); repeatable",
    )
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
        rate_limit = RateLimit.parse(args.rate_limit) if args.rate_limit else None
        links = dict(parse_link(text) for text in args.link)
        if args.lead_delay < 0:
            raise ValueError(f"--lead-delay: must be >= 0 seconds, got {args.lead_delay:g}")
    except ValueError as exc:
        parser.error(str(exc))
    problem = check_listen(args.host, args.port)
    if problem is not None:
        parser.error(problem)
    forbidden: list[Route] = args.forbid
    app = FakeProvider(
        args.provider,
        faults=faults,
        api_key=args.api_key,
        strict=not args.lenient,
        rate_limit=rate_limit,
        links=links,
        disabled_clicks=args.disabled_click,
        program=not args.no_program,
        forbidden_routes=forbidden,
        lead_delay=args.lead_delay,
    )

    try:
        import uvicorn  # lazily: uvicorn is a test/extra dependency
    except ImportError:
        parser.error("the fake provider runs under uvicorn: pip install uvicorn")

    host = f"[{args.host}]" if ":" in args.host else args.host
    print(banner(app, f"http://{host}:{args.port}"), file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
