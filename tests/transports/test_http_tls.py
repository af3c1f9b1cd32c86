"""HTTPTransport over TLS against nginx, with a CA made for the test: verification and SNI.

The CA reaches httpx through ``SSL_CERT_FILE`` (read with ``trust_env``), as a user behind a
TLS-inspecting proxy would give theirs.

nginx (``tests/support/nginx.py``) runs on a free port and answers ``return 200`` with the SNI
it saw. Without nginx or openssl the tests are skipped with the reason, unless ``CI`` is set:
then they fail.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_attribution import DUB, DeliveryError, HTTPTransport, LeadEvent
from asgi_attribution.transports import Delivery

from ..support.nginx import run_nginx, unavailable

pytestmark = pytest.mark.anyio


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(tmp: Path) -> None:
    """ca.pem (a self-signed CA), server.pem/server.key for localhost (no IP in the SAN)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=asgi-attribution test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp)  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=tmp)  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
            cwd=tmp)  # fmt: skip


SERVER = """
    keepalive_requests 3;
    server {{
        listen 127.0.0.1:{ports[0]} ssl;
        server_name localhost;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.key;
        location / {{ default_type application/json; return 200 '{{"sni": "$ssl_server_name"}}'; }}
    }}
"""


@pytest.fixture(scope="module")
def nginx_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """nginx over TLS on a free port; yields the port and the directory holding ca.pem."""
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed")
    tmp = tmp_path_factory.mktemp("nginx")
    make_ca(tmp)
    with run_nginx(SERVER, tmp) as (port,):
        yield port, tmp


def lead(user: str = "u1") -> Delivery:
    return Delivery(LeadEvent(click_id="c", event_name="Sign up", customer_external_id=user), DUB)


async def test_verified_tls_with_sni_and_keepalive_past_the_servers_limit(
    nginx_tls: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, tmp = nginx_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp / "ca.pem"))
    transport = HTTPTransport("k", base_url=f"https://localhost:{port}", concurrency=2)
    try:
        # nginx closes a connection after 3 requests (keepalive_requests 3): 20 still succeed.
        for i in range(20):
            result = await transport.attempt(lead(f"u{i}"))
            assert (result.status_code, result.response) == (200, {"sni": "localhost"})
    finally:
        await transport.aclose()


async def test_unknown_ca_is_refused(
    nginx_tls: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = nginx_tls
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    transport = HTTPTransport("k", base_url=f"https://localhost:{port}")  # certifi: not our CA
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        await transport.attempt(lead())
    await transport.aclose()
    assert caught.value.code == "ConnectError"


async def test_host_name_not_in_the_certificate_is_refused(
    nginx_tls: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, tmp = nginx_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp / "ca.pem"))
    transport = HTTPTransport("k", base_url=f"https://127.0.0.1:{port}")  # the SAN: localhost
    with pytest.raises(DeliveryError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        await transport.attempt(lead())
    await transport.aclose()
