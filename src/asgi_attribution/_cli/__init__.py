"""The asgi-attribution command (also python -m asgi_attribution).

Subcommands: demo (the click -> landing -> signup journey, in-process), fake-provider (a
fault-injecting local Dub/PIMMS API) and outbox (inspect and operate a durable outbox). Each
loads only what it needs; ``import asgi_attribution`` never imports this package.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from .. import __version__
from .common import EXIT_USAGE, CommandParser, UsageError, error_line, exit_codes, wrap

__all__ = ["main"]


DESCRIPTION = wrap(
    "Credit signups to link clicks for Dub/PIMMS: try the journey locally, fake the "
    "provider's API, operate a durable outbox.",
    "Run asgi-attribution COMMAND --help for the options of each.",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand: ``demo``, ``fake-provider`` or ``outbox``. Returns the exit code.

    Usage errors exit with code 2 after one line on stderr (``SystemExit``).

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     code = main(["demo"])
        >>> code, "POST https://api.dub.co/track/lead" in out.getvalue()
        (0, True)
    """
    parser = CommandParser(
        prog="asgi-attribution",
        description=DESCRIPTION,
        epilog=exit_codes("the command failed (see each command's --help)"),
    )
    parser.add_argument("--version", action="version", version=f"asgi-attribution {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the click -> landing -> signup journey locally",
        description=wrap(
            "Walk a visitor from a Dub link to a tracked signup, in-process, and print each "
            "step and the exact JSON that would be sent to Dub. No account, no network."
        ),
        epilog=exit_codes(
            "the signup was not credited to the click",
            usage="usage error (e.g. an --app that cannot be imported)",
        ),
    )
    demo.add_argument(
        "--app",
        default=None,
        help="module:attribute of an app factory (taking tracker=) or an ASGI app to walk "
        "through instead of the built-in demo site",
    )
    commands.add_parser(
        "fake-provider",
        help="serve a fault-injecting local Dub/PIMMS API (see its --help)",
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
            demo.error(f"unrecognized arguments: {' '.join(rest)}")
        from .demo import run_demo

        try:
            return asyncio.run(run_demo(args.app))
        except UsageError as exc:
            print(error_line(demo.prog, exc), file=sys.stderr)
            return EXIT_USAGE
    if args.command == "outbox":
        from .outbox import main as outbox_main

        return outbox_main(rest)
    from .fake_provider import main as fake_provider_main

    return fake_provider_main(rest)
