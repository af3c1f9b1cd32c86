"""The demo works from an installed wheel, outside any checkout: it ships its own demo site."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_from_the_installed_wheel(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("asgi_attribution-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "asgi_attribution/_cli/demo.py" in names
    assert "asgi_attribution/py.typed" in names
    assert not any(name.startswith(("examples/", "tests/")) for name in names)
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )

    # The venv's python, for the dependencies; the package itself from the wheel (PYTHONPATH
    # comes before the editable install's path), run from a folder with no examples/ in it.
    env = {**os.environ, "PYTHONPATH": str(target), "DUB_API_KEY": "", "NO_PROXY": "*"}
    where = subprocess.run(
        [sys.executable, "-c", "import asgi_attribution; print(asgi_attribution.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    demo = subprocess.run(
        [sys.executable, "-m", "asgi_attribution", "demo"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert f"{target}" not in demo.stderr
    assert "POST https://api.dub.co/track/lead" in demo.stdout
    assert '"clickId": "cm3demo7Qx2Lp9"' in demo.stdout
    assert "credited to cm3demo7Qx2Lp9" in demo.stdout
