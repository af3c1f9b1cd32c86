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
    *(["outbox", name] for name in ("status", "list", "retry", "purge", "deliver")),
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


def test_the_outbox_help_says_what_each_code_means() -> None:
    assert "unknown event ids" in run("outbox", "--help").stdout
    assert "not dead letters in this outbox" in run("outbox", "retry", "--help").stdout
    assert "the outbox holds dead letters" in run("outbox", "status", "--help").stdout
    listing = run("outbox", "list", "--help").stdout
    assert "--json prints JSON Lines: one JSON object per event and line" in listing
    assert "--state {pending,inflight,dead,all}" in listing and "same as --state dead" in listing


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
