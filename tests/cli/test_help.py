"""``--help`` is plain text with the exit codes in its epilog, for the command and each
subcommand; ``--version`` names the package's version; the package never imports the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import asgi_attribution

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    [],
    ["demo"],
    ["fake-provider"],
    ["outbox"],
    *(["outbox", name] for name in ("status", "list", "retry", "purge", "deliver", "init")),
]


def run(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or [sys.executable, "-m", "asgi_attribution"]), *args],
        cwd=ROOT,
        env={**os.environ, "CI": "true", "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "top")
def test_help_is_plain_text_with_the_exit_codes(words: list[str]) -> None:
    result = run(*words, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    assert text.startswith("usage: asgi-attribution")
    for markup in ("``", ":class:", ":mod:", ":func:", ">>>"):
        assert markup not in text
    epilog = text[text.index("\nexit codes:\n") :]
    assert "\n  0  ok\n" in epilog and "\n  1  " in epilog and "\n  2  usage error" in epilog
    assert all(len(line) <= 100 for line in text.splitlines())


def help_of(*words: str) -> str:
    """The ``--help`` text with its whitespace folded (meanings wrap at 78 columns)."""
    return " ".join(run(*words, "--help").stdout.split())


def test_the_outbox_help_says_what_each_code_means() -> None:
    assert "unknown event ids" in help_of("outbox")
    retry = help_of("outbox", "retry")
    assert "not dead letters in this outbox, or a retry was refused" in retry
    assert "--force" in retry and "7 days" in retry and "link: null" in retry
    assert "the outbox holds dead letters, or the store reports problems" in help_of(
        "outbox", "status"
    )
    listing = help_of("outbox", "list")
    assert "--json prints JSON Lines: one JSON object per event and line" in listing
    assert "--state STATE" in listing
    assert "pending, inflight, dead, not-recorded or all (default: all)" in listing
    assert "same as --state dead" in listing and "same as --state not-recorded" in listing
    assert "--vacuum" in help_of("outbox", "purge")
    assert "delivery paused on a fault of the integration" in help_of("outbox", "deliver")
    for name in ("status", "list", "retry", "purge", "deliver", "init"):
        text = help_of("outbox", name)
        assert "--postgres-url" in text and "--postgres-table" in text, name
        assert "--allow-eviction" in text, name


def test_version() -> None:
    result = run("--version")
    assert (result.returncode, result.stdout) == (
        0,
        f"asgi-attribution {asgi_attribution.__version__}\n",
    )


def test_version_from_the_console_script() -> None:
    script = Path(sys.executable).parent / "asgi-attribution"
    if not script.exists():
        pytest.skip("the console script is not installed next to this python")
    result = run("--version", command=[str(script)])
    assert (result.returncode, result.stdout) == (
        0,
        f"asgi-attribution {asgi_attribution.__version__}\n",
    )


def test_importing_the_package_never_imports_the_cli() -> None:
    code = (
        "import asgi_attribution, sys; print([m for m in sys.modules if 'attribution._cli' in m])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "[]\n"
