"""The README's demo command runs the whole journey with no account and no network: on the
package's own demo site, or on another app with ``--app``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DUB_API_KEY": "", "NO_PROXY": "*"}
    return subprocess.run(
        [sys.executable, "-m", "asgi_attribution", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "app", [[], ["--app", "examples.app:create_app"], ["--app", "examples.app:app"]]
)
def test_demo_prints_each_step_and_the_json_for_dub(app: list[str]) -> None:
    result = run("demo", *app)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Set-Cookie: dub_id=cm3demo7Qx2Lp9; Max-Age=7776000; Path=/; Domain=.acme.example" in out
    assert "credited to cm3demo7Qx2Lp9" in out
    assert "POST https://api.dub.co/track/lead" in out
    body = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert body["clickId"] == "cm3demo7Qx2Lp9"
    assert body["eventName"] == "Sign up"
    assert body["customerEmail"] == "ada@example.com"


def test_demo_with_a_wrong_app_gives_a_one_line_error() -> None:
    result = run("demo", "--app", "no_such_module:app")
    assert result.returncode != 0
    assert "cannot import 'no_such_module'" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_with_stray_arguments_is_a_usage_error() -> None:
    result = run("demo", "--frobnicate")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr
