"""Fixtures for the browser journeys: one headless Chromium per module, real servers per test.

The browser is Debian's ``chromium`` driven by Playwright for Python (``executable_path``; no
browser is ever downloaded). Without Chromium or Playwright the journeys skip with the reason,
except when ``CI`` is set: then they fail, so CI cannot pass without running them.

Each test gets a fresh browser context (no cookies), the example app and a ``FakeProvider``
served by uvicorn on 127.0.0.1, and a screenshot of the last page in
``test-results/browser/<test name>.png``.

Every context blocks the provider's browser script (as an ad blocker does, and so no test
reaches the internet) and records what it blocked. Headless Chromium calls itself
``HeadlessChrome``, which Dub's bot filter drops; contexts send the User-Agent the same
Chromium build sends with a window (``Chrome/``), which is what a visitor's browser sends.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from asgi_attribution import RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread
from examples.app import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "test-results" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "test_key"
# How long a broken run waits before failing (never an assertion on how long things took).
DEADLINE_SECONDS = 30.0
# The provider's browser script and what it loads: Dub's CDN (and a site's reverse proxy of it
# under /_script or /analytics), PIMMS' CDN. Blocked in every context, like an ad blocker.
PROVIDER_SCRIPTS = re.compile(r"dubcdn\.com|pimms\.io|/_script|/analytics/script")


def unavailable(reason: str) -> None:
    """Skip (printing why) on a developer machine; fail loudly in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    print(f"skipping browser tests: {reason}")
    pytest.skip(reason)


def chromium_path() -> str | None:
    found = shutil.which(CHROMIUM)
    return found if found and os.access(found, os.X_OK) else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module; each test opens its own context in it.

    Module scope, not session: while Playwright's sync API is running it holds an asyncio loop
    in the main thread, and the suite's async tests (anyio) cannot start theirs until it stops.
    All journeys live in one module, so this is still one browser for all of them.
    """
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=)")
    assert executable is not None
    with sync_playwright() as playwright:
        try:
            # launch() gives every browser a fresh temporary profile (user data dir).
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
        except Error as exc:
            unavailable(f"Chromium at {executable} did not start: {exc.message.splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def visitor_user_agent(browser: Browser) -> str:
    """The User-Agent this Chromium sends with a window: headless, it says ``HeadlessChrome``."""
    context = browser.new_context()
    try:
        headless = str(context.new_page().evaluate("navigator.userAgent"))
    finally:
        context.close()
    assert "HeadlessChrome/" in headless, headless
    return headless.replace("HeadlessChrome/", "Chrome/")


@pytest.fixture
def blocked() -> list[str]:
    """The URLs of provider-script requests the test's browser context blocked."""
    return []


def block_provider_scripts(context: BrowserContext, blocked: list[str]) -> None:
    """Abort every request for the provider's script, as an ad blocker would; note its URL."""

    def abort(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort("blockedbyclient")

    context.route(PROVIDER_SCRIPTS, abort)


@pytest.fixture
def page(
    browser: Browser, visitor_user_agent: str, blocked: list[str], request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page in a fresh context (no cookies); its last state is saved as a screenshot."""
    context = browser.new_context(
        viewport={"width": 900, "height": 640}, user_agent=visitor_user_agent
    )
    context.set_default_timeout(DEADLINE_SECONDS * 1000)
    block_provider_scripts(context, blocked)
    page = context.new_page()
    try:
        yield page
    finally:
        try:
            save_screenshot(page, request.node.name)
        finally:
            context.close()


def save_screenshot(page: Page, name: str) -> None:
    """Save the whole page as ``test-results/browser/<name>.png``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.\[\]-]", "_", name)
    page.screenshot(path=str(RESULTS_DIR / f"{name}.png"), full_page=True)


class Site:
    """The example app and the fake provider behind it, each served by uvicorn."""

    def __init__(self, url: str, provider: FakeProvider, stack: ExitStack) -> None:
        self.url = url
        self.provider = provider
        self._stack = stack

    def close(self) -> None:
        """Stop the app (its lifespan shutdown drains the tracker), then the provider.

        After this, everything the app tracked has reached the provider or failed.
        """
        self._stack.close()

    def leads(self) -> list[dict[str, Any]]:
        """Bodies of the lead events the provider accepted."""
        return self.provider.leads()

    def paths(self) -> list[str]:
        """``METHOD /path`` of every request the provider handled, oldest first."""
        return [f"{r.method} {r.path}" for r in self.provider.requests]


@pytest.fixture
def serve_site() -> Iterator[Callable[..., Site]]:
    """``serve_site(provider="dub", *, links=, known_clicks=, base_url=, **middleware_options)``:
    start the example app for real.

    The app's ``Tracker`` crosses a real socket to a ``FakeProvider`` that checks the API key
    and the request bodies the way the provider does; ``links`` and ``known_clicks`` go to the
    fake. ``base_url`` sends the tracker (and so the partner-click call) elsewhere instead.
    """
    sites: list[Site] = []

    def serve(
        provider: str = "dub",
        *,
        links: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        known_clicks: Collection[str] | None = None,
        base_url: str | None = None,
        **options: Any,
    ) -> Site:
        stack = ExitStack()
        try:
            fake = FakeProvider(
                provider,  # type: ignore[arg-type]
                api_key=API_KEY,
                links=links,
                known_clicks=known_clicks,
            )
            fake_url = stack.enter_context(serve_in_thread(fake))
            tracker = Tracker(
                provider,
                api_key=API_KEY,
                base_url=base_url or fake_url,
                retry=RetryPolicy(max_elapsed=DEADLINE_SECONDS),
            )
            url = stack.enter_context(serve_in_thread(create_app(tracker=tracker, **options)))
        except BaseException:
            stack.close()
            raise
        site = Site(url, fake, stack)
        sites.append(site)
        return site

    try:
        yield serve
    finally:
        for site in reversed(sites):
            site.close()


class SilentServer:
    """A TCP server that accepts connections, reads what is sent and never answers.

    ``received`` holds the bytes each connection sent (so a test sees the request was made).
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="SilentServer", daemon=True)
        self._thread.start()

    def requests(self) -> list[bytes]:
        with self._lock:
            return list(self.received)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(0.5)
            try:
                data = connection.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                self._connections.append(connection)
                self.received.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()


@contextmanager
def silent_server() -> Iterator[SilentServer]:
    """A provider that never answers: calls to it hang until the caller's timeout."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
