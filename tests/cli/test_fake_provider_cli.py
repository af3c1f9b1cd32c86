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
LEAD = {"clickId": "c1", "eventName": "Sign up", "externalId": "u1"}  # PIMMS' body
DUB_LEAD = {"clickId": "c1", "eventName": "Sign up", "customerExternalId": "u1"}


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


def start_fake(*options: str) -> tuple[subprocess.Popen[bytes], str]:
    """``asgi-attribution fake-provider`` in a real process, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "asgi_attribution", "fake-provider", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base_url}/_fake/events", timeout=1)
            return process, base_url
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, stderr = process.communicate(timeout=30)
                pytest.fail(f"the fake provider did not start: {stderr.decode()}")
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    _, stderr = process.communicate(timeout=30)
    return stderr.decode()


def test_partner_links_faults_and_the_banner() -> None:
    process, base_url = start_fake(
        *("--api-key", "k", "--fail-first", "1", "--slow-rate", "1", "--slow-seconds", "0.05"),
        *("--link", "go.acme.com/john=John Doe", "--link", "go.acme.com/summer"),
    )
    try:
        # Injected faults are listed with their status: the first 503, then a slow 200
        # (before any click: --fail-first counts every route).
        headers = {**AUTH, "Idempotency-Key": "evt_a"}
        assert (
            httpx.post(f"{base_url}/track/lead", json=DUB_LEAD, headers=headers).status_code == 503
        )
        assert (
            httpx.post(f"{base_url}/track/lead", json=DUB_LEAD, headers=headers).status_code == 200
        )
        faulted = httpx.get(f"{base_url}/_fake/events").json()["faulted"]
        assert [(f["fault"], f["status"], f["idempotency_key"]) for f in faulted] == [
            ("error", 503, "evt_a"),
            ("slow", 200, "evt_a"),
        ]
        via = {"domain": "go.acme.com", "key": "john"}
        # The partner link answers its partner, the plain one only a click id; others 404.
        first = httpx.post(f"{base_url}/track/click", json=via)
        assert first.status_code == 200
        assert first.json()["partner"]["name"] == "John Doe"
        plain = httpx.post(f"{base_url}/track/click", json={**via, "key": "summer"}).json()
        assert set(plain) == {"clickId"}
        unknown = {"domain": "go.acme.com", "key": "jane"}
        assert httpx.post(f"{base_url}/track/click", json=unknown).status_code == 404
        # One more, registered later over HTTP.
        added = httpx.post(f"{base_url}/_fake/links", json={"link": "go.acme.com/jane=Jane"})
        assert added.status_code == 200, added.text
        jane = httpx.post(f"{base_url}/track/click", json=unknown).json()
        assert jane["partner"] == {"id": "pn_jane", "name": "Jane"} | {
            k: None for k in ("image", "groupId", "tenantId")
        }
        partner = {"id": "pn_ana", "name": "Ana", "tenantId": "t_9"}
        fields = {"domain": "go.acme.com", "key": "ana", "partner": partner}
        assert httpx.post(f"{base_url}/_fake/links", json=fields).status_code == 200
        ana = httpx.post(f"{base_url}/track/click", json={**via, "key": "ana"}).json()
        assert ana["partner"]["tenantId"] == "t_9"
        bad = httpx.post(f"{base_url}/_fake/links", json={"link": "no-key"})
        assert bad.status_code == 422 and "DOMAIN/KEY" in bad.text
        links = httpx.get(f"{base_url}/_fake/links").json()["links"]
        assert [(link["domain"], link["key"]) for link in links] == [
            ("go.acme.com", "john"),
            ("go.acme.com", "summer"),
            ("go.acme.com", "jane"),
            ("go.acme.com", "ana"),
        ]
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr
    assert f"fake dub API at {base_url}" in stderr
    assert "API key:   k (Authorization: Bearer k)" in stderr
    assert "faults:    slow_rate=1.0, slow_seconds=0.05, fail_first=1" in stderr
    assert "links:     go.acme.com/john (partner John Doe), go.acme.com/summer" in stderr
    assert "control:   GET /_fake/events" in stderr


def test_the_fake_providers_recent_options_on_the_command_line() -> None:
    process, base_url = start_fake(
        *("--no-program", "--forbid", "sale", "--disabled-click", "clk_off"),
    )
    try:
        sale = {"customerExternalId": "u1", "amount": 100, "invoiceId": "in_1"}
        assert httpx.post(f"{base_url}/track/sale", json=sale, headers=AUTH).status_code == 403
        off = {**DUB_LEAD, "clickId": "clk_off"}
        answer = httpx.post(f"{base_url}/track/lead", json=off, headers=AUTH)
        assert answer.status_code == 404, answer.text
        assert httpx.get(f"{base_url}/commissions", headers=AUTH).status_code == 404
        assert httpx.post(f"{base_url}/track/lead", json=DUB_LEAD, headers=AUTH).status_code == 200
    finally:
        stderr = stop(process)
    assert "links:     none (every ?via= landing gets 404; use --link)" in stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--link", "john"], "expected DOMAIN/KEY or DOMAIN/KEY=PARTNER, got 'john'"),
        (["--lead-delay", "-1"], "--lead-delay: must be >= 0"),
        (["--forbid", "everything"], "invalid choice: 'everything'"),
    ],
)
def test_bad_new_options_are_usage_errors(
    options: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fake-provider", *options])
    assert exc.value.code == 2
    assert said in capsys.readouterr().err
