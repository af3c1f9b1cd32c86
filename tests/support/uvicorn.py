"""A real uvicorn in its own process, for the tests that stop it with signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Uvicorn:
    """``uvicorn <target> <args>`` in its own process; ``stop()`` sends SIGTERM, keeps the log."""

    def __init__(self, target: str, fake_url: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *args, target, "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "FAKE_PROVIDER_URL": fake_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Uvicorn:
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.stop()}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None
        self.log += self.process.stderr.read().decode()
        self.process.stderr.close()
        return self.log

    def __exit__(self, *exc_info: object) -> None:
        if self.process.returncode is None:
            self.stop()
