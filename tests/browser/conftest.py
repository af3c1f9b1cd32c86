"""Fixtures for the browser journeys: one headless Chromium per module, real servers per test.

The browser is Debian's ``chromium`` driven by Playwright for Python (``executable_path``; no
browser is ever downloaded). Without Chromium or Playwright the journeys skip with the reason,
except when ``CI`` is set: then they fail, so CI cannot pass without running them.

Each test gets a fresh browser context (no cookies), the example app and a ``FakeProvider``
served by uvicorn on 127.0.0.1, and a screenshot of the last page in
``test-results/browser/<test name>.png``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from asgi_attribution import RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread
from examples.app import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

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


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context (no cookies); its last state is saved as a screenshot."""
    context = browser.new_context(viewport={"width": 900, "height": 640})
    context.set_default_timeout(DEADLINE_SECONDS * 1000)
    page = context.new_page()
    try:
        yield page
    finally:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.\[\]-]", "_", request.node.name)
        try:
            page.screenshot(path=str(RESULTS_DIR / f"{name}.png"), full_page=True)
        finally:
            context.close()


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


@pytest.fixture
def serve_site() -> Iterator[Callable[..., Site]]:
    """``serve_site(provider="dub", **middleware_options)``: start the example app for real.

    The app's ``Tracker`` crosses a real socket to a ``FakeProvider`` that checks the API key
    and the request bodies the way the provider does.
    """
    sites: list[Site] = []

    def serve(provider: str = "dub", **options: Any) -> Site:
        stack = ExitStack()
        try:
            fake = FakeProvider(provider, api_key=API_KEY)  # type: ignore[arg-type]
            fake_url = stack.enter_context(serve_in_thread(fake))
            tracker = Tracker(
                provider,
                api_key=API_KEY,
                base_url=fake_url,
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
