"""The ``asgi-attribution`` command (also ``python -m asgi_attribution``).

Subcommands: ``demo`` (the click -> landing -> signup journey, in-process), ``fake-provider``
(a fault-injecting local Dub/PIMMS API) and ``outbox`` (inspect and operate a durable outbox).
Each loads only what it needs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand: ``demo``, ``fake-provider`` or ``outbox``. Returns the exit code.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = main(["demo"])
        >>> code, "POST https://api.dub.co/track/lead" in out.getvalue()
        (0, True)
    """
    parser = argparse.ArgumentParser(
        prog="asgi-attribution",
        description="Credit signups to link clicks for Dub/PIMMS: demo, fake provider, outbox.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the click -> landing -> signup journey locally")
    demo.add_argument(
        "--app",
        default=None,
        help="module:attribute of an app factory (taking tracker=) or an ASGI app to walk "
        "through instead of the built-in demo site",
    )
    commands.add_parser(
        "fake-provider",
        help="serve a fault-injecting local Dub/PIMMS API (see --help of the subcommand)",
        add_help=False,
    )
    commands.add_parser(
        "outbox",
        help="inspect and operate a durable outbox: status, list, retry, purge, deliver",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from .demo import run_demo

        return asyncio.run(run_demo(args.app))
    if args.command == "outbox":
        from .outbox import main as outbox_main

        return outbox_main(rest)
    from .fake_provider import main as fake_provider_main

    return fake_provider_main(rest)
