"""A real nginx for the tests that need a proxy or a TLS server in front of something.

The tests give the ``server {}`` block; this module owns the rest: finding the binary, the
``http {}`` frame (temporary paths in the test's directory), free ports, waiting until nginx
listens, and stopping it. Without nginx the test is skipped with the reason, unless ``CI`` is
set: then it fails, as the PostgreSQL and Redis tests do. (``bench/nginx.py`` is the bench's own.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .uvicorn import free_port

__all__ = ["NGINX", "run_nginx", "unavailable"]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)

FRAME = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""


def unavailable(reason: str) -> None:
    """Skip the test for ``reason`` (a missing program), or fail it when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: these tests must run)")
    pytest.skip(reason)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


@contextmanager
def run_nginx(server_block: str, tmp: Path, ports: int = 1) -> Iterator[list[int]]:
    """nginx serving ``server_block`` on ``ports`` free ports; yields them once all listen.

    ``server_block``: the ``server {}`` block, after any ``http``-level directive it needs; a
    ``str.format`` template (nginx braces doubled) where ``{ports[0]}``... and ``{tmp}`` are
    filled in. ``tmp`` holds the configuration, the logs and the temporary paths.
    """
    if NGINX is None:
        unavailable("nginx is not installed")
    assert NGINX is not None
    chosen = [free_port() for _ in range(ports)]
    os.chmod(tmp, 0o755)  # nginx workers (user nobody when run as root) read from here
    server = server_block.format(ports=chosen, tmp=tmp)
    (tmp / "nginx.conf").write_text(FRAME.format(tmp=tmp, server=server))
    with open(tmp / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30  # generous: the machine is shared
        while not all(_listening(port) for port in chosen):
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = [tmp / "stderr.log", tmp / "error.log"]
                said = " ".join(log.read_text() for log in logs if log.exists())
                pytest.fail(f"nginx did not start (exit {proc.poll()}): {said}")
            time.sleep(0.05)
        yield chosen
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
