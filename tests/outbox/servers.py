"""Real redis-server instances for the outbox tests: one per case, with the settings it needs.

Each server runs on a free 127.0.0.1 port in its own directory; a test can stop it (SIGSTOP,
a hung server), kill it (SIGKILL), and start it again with or without its data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RedisServer", "free_port", "unavailable"]


def unavailable(reason: str) -> None:
    """Skip (fail when ``CI`` is set: there the Redis tests must run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the Redis tests must run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``args`` are its settings (``--appendonly yes`` ...)."""

    def __init__(
        self, directory: Path, *args: str, port: int | None = None, start: bool = True
    ) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            unavailable("redis-py is not installed: pip install 'asgi-attribution[redis]'")
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("no redis-server binary on PATH (Debian: apt-get install redis-server)")
        assert binary is not None
        self.binary = binary
        self.directory = directory
        self.args = args
        self.port = free_port() if port is None else port
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), *self.args]
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = self.client()
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        break
                except Exception:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        unavailable(f"redis-server did not start on port {self.port}")
                    time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: whatever was not written to disk is gone."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def wipe(self) -> None:
        """Delete the server's data files (it must be stopped)."""
        assert self.process is None
        shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
