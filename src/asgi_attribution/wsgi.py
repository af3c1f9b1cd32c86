"""``AttributionMiddleware`` for WSGI apps: Flask, Django under gunicorn / uWSGI / mod_wsgi.

The same options and the same decision as the ASGI middleware (it asks one inside it,
:meth:`asgi_attribution.AttributionMiddleware.decide`): landing, cookies, first/last click,
consent, GPC, signing, forwarded host, partner ``?via=`` clicks. The request's attribution is
kept in the WSGI ``environ``, where :func:`~asgi_attribution.get_attribution` and
``asgi_attribution.sync.track_*`` find it from the environ, a Flask ``request`` or a Django
``HttpRequest``.

Delivery runs on the tracker's own event loop, in a daemon thread of each process, started on
the first request that process serves: after a pre-fork server (gunicorn, uWSGI) forked its
workers, never in the parent. What it holds is drained within ``shutdown_timeout`` at
interpreter exit (gunicorn's workers exit that way on SIGTERM); where SIGTERM would kill the
process outright (no Python handler), the middleware's handler makes it exit the same orderly
way. A Python SIGTERM handler already there (gunicorn's) is called as before, never replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType
from typing import Any

from ._attribution import Attribution
from ._context import ENVIRON_KEY, current_scope
from ._landing import Header, app_decided
from ._middleware import AttributionMiddleware as _ASGIMiddleware
from ._tracker import Tracker, alive
from .sync import start_owner

__all__ = ["AttributionMiddleware", "scope_from_environ"]


logger = logging.getLogger("asgi_attribution")

StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# WSGI names a few headers without the HTTP_ prefix.
_UNPREFIXED = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}


def scope_from_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The ASGI HTTP scope a WSGI ``environ`` describes: what the shared decision reads.

    Example:
        >>> scope = scope_from_environ({"REQUEST_METHOD": "GET", "QUERY_STRING": "dub_id=c1",
        ...     "HTTP_HOST": "shop.example.com", "wsgi.url_scheme": "https", "PATH_INFO": "/"})
        >>> scope["query_string"], scope["headers"], scope["scheme"]
        (b'dub_id=c1', [(b'host', b'shop.example.com')], 'https')
    """
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-").encode("latin-1")
        elif key in _UNPREFIXED:
            name = _UNPREFIXED[key]
        else:
            continue
        headers.append((name, str(value).encode("latin-1", "replace")))
    try:
        port = int(environ.get("SERVER_PORT") or 0)
    except ValueError:
        port = 0
    try:
        client_port = int(environ.get("REMOTE_PORT") or 0)
    except ValueError:
        client_port = 0
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).partition("/")[2],
        "method": environ.get("REQUEST_METHOD", "GET"),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": environ.get("PATH_INFO", "") or "/",
        "root_path": environ.get("SCRIPT_NAME", ""),
        "query_string": str(environ.get("QUERY_STRING", "")).encode("latin-1", "replace"),
        "headers": headers,
        "server": (environ.get("SERVER_NAME", ""), port),
        "client": (environ.get("REMOTE_ADDR", ""), client_port),
    }


async def _no_asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("the WSGI middleware's decision is never called as an ASGI app")


class AttributionMiddleware:
    """Capture the provider's click id on every request of a WSGI app; deliver from a thread.

    Takes the ASGI :class:`asgi_attribution.AttributionMiddleware`'s options, with the same
    meaning; a ``consent`` callable receives a Starlette ``HTTPConnection`` built from the
    environ (``.cookies``, ``.headers``, ``.url``). The decision never fails a request: bad
    input is treated as absent. A partner click is asked on the tracker's event loop and waited
    for at most ``click_timeout`` (plus a second for the hand-off).

    Example:
        >>> from flask import Flask
        >>> from asgi_attribution import Tracker, get_attribution
        >>> from asgi_attribution.wsgi import AttributionMiddleware
        >>> app = Flask(__name__)
        >>> @app.get("/")
        ... def home():
        ...     from flask import request
        ...     return get_attribution(request).click_id or "organic"
        >>> app.wsgi_app = AttributionMiddleware(app.wsgi_app, tracker=Tracker("dub"))
        >>> response = app.test_client().get("/?dub_id=clk_1")
        >>> response.text, response.headers["Set-Cookie"].split(";")[0]
        ('clk_1', 'dub_id=clk_1')
    """

    def __init__(self, app: WSGIApp, tracker: Tracker | None = None, **options: Any) -> None:
        self.app = app
        #: The ASGI middleware whose decision this one asks (never called as an app).
        self.core = _ASGIMiddleware(_no_asgi_app, tracker, **options)
        self.tracker = self.core.tracker
        self._ours = self.core.set_cookie_prefixes
        self._pid: int | None = None
        self._lock = threading.Lock()
        # The click call is bounded by click_timeout on the loop; the margin is the hand-off's.
        self._wait = self.core.click_timeout + 1.0
        # Here too: a threaded dev server (werkzeug's) serves no request on the main thread.
        _exit_on_sigterm()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._pid != os.getpid():
            self._start()
        try:
            scope = scope_from_environ(environ)
            attribution, set_cookies = self._decide(scope)
        except Exception:  # never fail a request because of what a visitor sent
            logger.exception("attribution failed; handling the request without it")
            scope = {"type": "http", "headers": [], "query_string": b""}
            attribution, set_cookies = Attribution(self.core.provider), None
        self.core.attach(scope, attribution)
        environ[ENVIRON_KEY] = scope
        if set_cookies is not None:
            redirect = self.core.see_other(scope, set_cookies)
            if redirect is not None:
                start_response("303 See Other", [_text(header) for header in redirect])
                return [b""]
            start_response = self._adding(start_response, set_cookies)
        token = current_scope.set(scope)
        try:
            return self.app(environ, start_response)
        finally:
            current_scope.reset(token)

    def _start(self) -> None:
        """Start delivery in this process, once: on its first request, so after any fork."""
        with self._lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._pid = pid
            try:
                start_owner(self.tracker, start=True, on_end=self.core.aclose)
                _exit_on_sigterm()
            except Exception:  # delivery falls back to inline sends; the request goes on
                logger.exception("the %s tracker did not start", self.tracker.provider.name)

    def _decide(self, scope: dict[str, Any]) -> tuple[Attribution, tuple[Header, ...] | None]:
        """The shared decision; on the tracker's loop when it may wait (a partner click)."""
        if not self.core.may_await(scope):
            return _at_once(self.core.decide(scope))
        owner = self.tracker.loop
        if owner is None or not alive(owner):
            logger.warning("no event loop for the partner click or consent: request left organic")
            return Attribution(self.core.provider), None
        future = asyncio.run_coroutine_threadsafe(self.core.decide(scope), owner)
        try:
            return future.result(self._wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("attribution not decided within %gs: request left organic", self._wait)
            return Attribution(self.core.provider), None

    def _adding(self, start_response: StartResponse, cookies: tuple[Header, ...]) -> StartResponse:
        """``start_response``, adding a landing's cookies unless the app set ours itself."""
        extra = [_text(header) for header in cookies]

        def adding(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            present = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
            if not app_decided(present, self._ours):
                headers = [*headers, *extra]
            return start_response(status, headers, *args)

        return adding


Decision = tuple[Attribution, "tuple[Header, ...] | None"]


def _text(header: Header) -> tuple[str, str]:
    """A header as WSGI gives it: latin-1 text."""
    return header[0].decode("latin-1"), header[1].decode("latin-1")


def _at_once(decision: Coroutine[Any, Any, Decision]) -> Decision:
    """Run a coroutine that never waits on I/O (no partner click, a sync consent) to its end."""
    try:
        decision.send(None)
    except StopIteration as done:
        answer: Decision = done.value
        return answer
    decision.close()
    raise RuntimeError(
        "the consent callable returned an awaitable: make it `async def` (then it runs on the "
        "tracker's event loop) or a plain function"
    )


_sigterm_lock = threading.Lock()
_sigterm_set = False


def _exit_on_sigterm() -> None:
    """Where SIGTERM would kill the process outright, exit it in order instead (atexit drains).

    A handler set from Python (gunicorn's worker sets one: it finishes the request, then the
    worker exits and atexit drains) or from C (uWSGI) is left as it is.
    """
    global _sigterm_set
    with _sigterm_lock:
        if _sigterm_set or threading.current_thread() is not threading.main_thread():
            return
        if "uwsgi" in sys.modules:  # its C handlers stop workers; Python may not see them
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        _sigterm_set = True

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # SIG_DFL would end the process without atexit; SystemExit runs it, and with it
            # the tracker's drain (delivered or reported by id within shutdown_timeout).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)
