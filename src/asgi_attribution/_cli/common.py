"""What every subcommand shares: one-line usage errors, plain help, exit codes, value checks.

Each parser is a :class:`CommandParser`: a usage error is one line on stderr and exit code 2
(never the usage block, never a traceback), and the help text is printed as written.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandParser",
    "UsageError",
    "error_line",
    "exit_codes",
    "port",
    "positive_float",
    "positive_int",
    "wrap",
]


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad input found after parsing (exit code 2, one line on stderr)."""


def exit_codes(failed: str, usage: str = "usage error or unusable store") -> str:
    """The ``--help`` epilog: what each exit code means; ``failed`` says what 1 means here,
    ``usage`` what 2 means (always a single line on stderr); long meanings wrap at 78 columns.

    Example:
        >>> print(exit_codes("some events are dead letters"))
        exit codes:
          0  ok
          1  some events are dead letters
          2  usage error or unusable store (one line on stderr)
    """
    lines = [
        textwrap.fill(f"  {code}  {text}", width=78, subsequent_indent="     ")
        for code, text in (("0", "ok"), ("1", failed), ("2", f"{usage} (one line on stderr)"))
    ]
    return "exit codes:\n" + "\n".join(lines)


def wrap(*paragraphs: str) -> str:
    """Plain help text: each paragraph filled to 78 columns, a blank line between them.

    Example:
        >>> print(wrap("Deliver pending events now.", "Exit codes follow."))
        Deliver pending events now.
        <BLANKLINE>
        Exit codes follow.
    """
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width=78) for p in paragraphs)


def error_line(prog: str, message: object) -> str:
    """The one line a command prints for an error: newlines in ``message`` are folded.

    Example:
        >>> error_line("asgi-attribution outbox", "no outbox at x.db:\\nfile not found")
        'asgi-attribution outbox: error: no outbox at x.db: file not found'
    """
    text = " ".join(str(message).split())
    return f"{prog}: error: {text}"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2.

    Descriptions and epilogs are printed as written (``RawDescriptionHelpFormatter``).

    Example:
        >>> import contextlib, io
        >>> parser = CommandParser(prog="demo-cmd")
        >>> _ = parser.add_argument("--port", type=port)
        >>> with contextlib.redirect_stderr(io.StringIO()) as err:
        ...     try:
        ...         parser.parse_args(["--port", "99999"])
        ...     except SystemExit as exc:
        ...         code = exc.code
        >>> code, err.getvalue()
        (2, "demo-cmd: error: argument --port: invalid port '99999': use 0 to 65535\\n")
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line on stderr and exit with code 2."""
        print(error_line(self.prog, message), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port).

    Example:
        >>> port("8787")
        8787
    """
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use 0 to 65535")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1.

    Example:
        >>> positive_int("10")
        10
    """
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A number of seconds above 0.

    Example:
        >>> positive_float("0.5")
        0.5
    """
    value = float(_number(text, float))
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value
