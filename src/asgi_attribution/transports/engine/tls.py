"""TLS as httpx does it, and whether the environment asks for a proxy (then httpx is used).

Example:
    >>> ctx = default_ssl_context()
    >>> ctx.check_hostname, ctx.verify_mode.name
    (True, 'CERT_REQUIRED')
    >>> proxies_configured({"https_proxy": "http://proxy:3128"}), proxies_configured({})
    (True, False)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

__all__ = ["PROXY_VARIABLES", "default_ssl_context", "proxies_configured"]

#: The environment variables (in any case) that route httpx's requests through a proxy.
PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


def default_ssl_context() -> ssl.SSLContext:
    """A verifying client context built as ``httpx.create_ssl_context()`` builds its default.

    Certificates are checked against ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, otherwise
    against certifi's CA bundle; the host name is checked (and sent as SNI by the engine).

    Example:
        >>> default_ssl_context().minimum_version >= ssl.TLSVersion.TLSv1_2
        True
    """
    if os.environ.get("SSL_CERT_FILE"):
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        ctx = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    else:
        import certifi  # httpx's dependency, imported when a context is first needed

        ctx = ssl.create_default_context(cafile=certifi.where())
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def proxies_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``HTTP_PROXY``, ``HTTPS_PROXY`` or ``ALL_PROXY`` (any case) is set and not empty.

    The engine does not speak to proxies; when this is True, delivery goes through httpx,
    which honours them (and ``NO_PROXY``).

    Example:
        >>> proxies_configured({"ALL_PROXY": "socks5://h:1080"})
        True
        >>> proxies_configured({"HTTP_PROXY": ""})
        False
    """
    env = os.environ if environ is None else environ
    return any(value and key.lower() in PROXY_VARIABLES for key, value in env.items())
