"""``asgi-attribution fake-provider``: the fake Dub/PIMMS API in the foreground, under uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import get_args

from ..testing.fake_provider import FakeProvider, Faults, ProviderName, RetryAfterForm

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
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
