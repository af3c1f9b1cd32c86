"""A fixed fast server for the delivery floors: nginx ``return 200`` over plain HTTP and TLS.

Started on free ports with a temporary configuration and a CA made with openssl for the run;
``None`` when nginx or openssl is missing (the delivery rows are then not measured).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import free_port, wait_for_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
# A Dub-shaped lead answer, so SDKs that validate the response accept it.
BODY = (
    '{"click":{"id":"c"},"link":{"id":"link_1","domain":"dub.sh","key":"k",'
    '"shortLink":"https://dub.sh/k","url":"https://example.com","programId":null,'
    '"partnerId":null,"tenantId":null,"externalId":null},"customer":{"name":"n","email":null,"avatar":null,"externalId":"u"}}'
)
CONFIG = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{plain};
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.key;
        ssl_protocols TLSv1.3;
        location / {{ default_type application/json; return 200 '{body}'; }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    plain_url: str
    tls_url: str
    ca_file: str
    pid: int


def _openssl(tmp: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


def _certificates(tmp: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(tmp, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl(
        tmp, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"
    )
    (tmp / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(tmp, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2",
             "-extfile", "san.ext")  # fmt: skip


@contextlib.contextmanager
def nginx() -> Iterator[Nginx | None]:
    if NGINX is None or shutil.which("openssl") is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)
        _certificates(tmp)
        plain, tls = free_port(), free_port()
        conf = CONFIG.format(tmp=tmp, plain=plain, tls=tls, body=BODY)
        (tmp / "nginx.conf").write_text(conf)
        args = [NGINX, "-p", name, "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(plain)
            wait_for_port(tls)
            yield Nginx(f"http://127.0.0.1:{plain}", f"https://127.0.0.1:{tls}",
                        str(tmp / "ca.pem"), proc.pid)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
