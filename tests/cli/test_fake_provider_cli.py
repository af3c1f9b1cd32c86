"""``asgi-attribution fake-provider``: the fake under uvicorn in a real process, and its usage
errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from asgi_attribution._cli import main

AUTH = {"Authorization": "Bearer k"}
LEAD = {"clickId": "c1", "eventName": "Sign up", "externalId": "u1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serves_the_fake_with_faults_in_a_real_process() -> None:
    port = free_port()
    command = [sys.executable, "-m", "asgi_attribution", "fake-provider", "--provider", "pimms"]
    command += ["--port", str(port), "--fail-first", "1", "--api-key", "k"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/_fake/events", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, "the fake provider exited"
                assert time.monotonic() < deadline, "the fake provider did not start"
                time.sleep(0.05)
        assert httpx.post(f"{base_url}/track/lead", json=LEAD, headers=AUTH).status_code == 503
        assert httpx.post(f"{base_url}/track/lead", json=LEAD, headers=AUTH).status_code == 200
        accepted = httpx.get(f"{base_url}/_fake/events").json()["accepted"]
        assert [item["body"] for item in accepted] == [LEAD]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert b"Traceback" not in stderr


def test_rejects_bad_fault_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fake-provider", "--error-rate", "2"])
    assert exc.value.code == 2
    assert "error_rate" in capsys.readouterr().err
