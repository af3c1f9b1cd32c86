"""Under uvicorn with several worker processes, every queued event is delivered at shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited early: {process.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            httpx.post(url + "/signup?u=probe", headers={"cookie": "dub_id=probe"}, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


def test_two_uvicorn_workers_deliver_everything_and_drain_on_shutdown() -> None:
    provider = FakeProvider("dub", api_key="dub_test_key")
    # A slow, flaky provider so events are still queued when the server is told to stop.
    provider.faults = Faults(error_rate=0.2, slow_rate=0.3, slow_seconds=0.2, seed=11)
    with serve_in_thread(provider) as fake_url:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.support.multiworker_app:app",
                "--workers",
                "2",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "FAKE_PROVIDER_URL": fake_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, process)
            pids = set()
            with httpx.Client(base_url=url) as client:
                for i in range(200):
                    response = client.post(
                        f"/signup?u=user_{i}",
                        headers={"cookie": f"dub_id=clk{i}", "connection": "close"},
                    )
                    assert response.json()["status"] == "queued"
                    pids.add(response.json()["pid"])
            process.send_signal(signal.SIGTERM)  # graceful: lifespan shutdown drains
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        delivered = {lead["customerExternalId"] for lead in provider.leads()}
    if len(pids) < 2:
        pytest.skip("the OS sent every connection to one worker; nothing multi-worker was shown")
    assert {f"user_{i}" for i in range(200)} <= delivered
