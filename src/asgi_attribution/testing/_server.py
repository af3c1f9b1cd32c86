"""Run an ASGI app under a real uvicorn server in a background thread (tests, local fakes)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from starlette.types import ASGIApp

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server in a background thread; yield its base URL.

    ``port=0`` picks a free port. Exiting the block stops the server and joins the thread.
    Uvicorn's logging config is left alone (its records propagate to the root logger).

    Example:
        >>> import httpx
        >>> from asgi_attribution.testing import FakeProvider, serve_in_thread
        >>> with serve_in_thread(FakeProvider()) as base_url:
        ...     httpx.get(f"{base_url}/_fake/events").json()
        {'accepted': [], 'requests': [], 'faulted': []}
    """
    import uvicorn  # lazily: uvicorn is a test/extra dependency

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Binding here, not in uvicorn, tells us the real port before the server starts.
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="auto",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="serve_in_thread", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start; see its log records")
            time.sleep(0.005)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5.0)
        sock.close()
