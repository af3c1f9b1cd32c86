"""The ``asgi-attribution`` command (also ``python -m asgi_attribution``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand: ``demo``, ``fake-provider`` or ``outbox``. Returns the exit code.

    Example:
        >>> main(["demo"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="asgi-attribution", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the click -> landing -> signup journey locally")
    demo.add_argument(
        "--app",
        default="examples.app:create_app",
        help="module:attribute of an app factory or ASGI app (default: %(default)s)",
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
        from .outbox_cli import main as outbox_main

        return outbox_main(rest)
    from .fake_provider import main as fake_provider_main

    return fake_provider_main(rest)


if __name__ == "__main__":
    sys.exit(main())
