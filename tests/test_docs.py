"""The docs site works on its own: built with ``mkdocs build --strict``, served from 127.0.0.1.

The site is built into a temporary directory and served by a small static server that sends a
strict Content-Security-Policy: scripts only from the site itself or inline scripts whose
SHA-256 the server computed from the page (no ``'unsafe-inline'``, no ``'unsafe-eval'``), and
nothing from any other origin. Headless Chromium (Debian's ``chromium``, driven by Playwright,
as in ``tests/browser``) opens the pages with every request to a host other than 127.0.0.1
aborted, so the Mermaid sequence diagram can only render from the copy the site serves.

Without Chromium or Playwright the browser tests skip with the reason, except when ``CI`` is
set: then they fail, so CI cannot pass without running them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO_ROOT = Path(__file__).resolve().parents[1]
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
# How long a broken run waits before failing (never an assertion on how long things took).
DEADLINE_SECONDS = 20.0
# What Material itself asks other hosts for: its web fonts (Roboto from Google Fonts) and the
# repository's stars and latest release for the header (the GitHub API). Blocked here like
# everything else: the text falls back to the system fonts, the header shows the repo's name.
THEME_HOSTS = {"fonts.googleapis.com", "fonts.gstatic.com", "api.github.com"}
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.DOTALL)
SCRIPT_SRC = re.compile(r"""<script\b[^>]*\ssrc=["']?([^"'\s>]+)""", re.IGNORECASE)
# Records Content-Security-Policy violations as the page reports them.
CSP_RECORDER = """
window.__csp_violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__csp_violations.push({directive: event.effectiveDirective, blocked: event.blockedURI});
});
"""


def unavailable(reason: str) -> None:
    """Skip (printing why) on a developer machine; fail loudly in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"docs tests cannot run in CI: {reason}", pytrace=False)
    print(f"skipping docs tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs, built with ``mkdocs build --strict`` (a warning fails the build)."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        unavailable("MkDocs is not installed (pip install -e '.[docs]')")
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"),
            *("--config-file", str(REPO_ROOT / "mkdocs.yml"), "--site-dir", str(site_dir)),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return site_dir


class StrictSiteHandler(SimpleHTTPRequestHandler):
    """Static files, with a strict CSP on every HTML page (inline scripts allowed by hash)."""

    def send_head(self) -> Any:
        self._csp = self._policy_for(self.translate_path(self.path))
        return super().send_head()

    def end_headers(self) -> None:
        if getattr(self, "_csp", None):
            self.send_header("Content-Security-Policy", self._csp)
        super().end_headers()

    def _policy_for(self, path: str) -> str | None:
        file = Path(path)
        if file.is_dir():
            file = file / "index.html"
        if file.suffix != ".html" or not file.is_file():
            return None
        hashes = " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
            for body in INLINE_SCRIPT.findall(file.read_bytes())
        )
        return (
            f"default-src 'self'; script-src 'self' {hashes}; "
            # Mermaid and Material style the diagram with <style> elements and attributes.
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
        )

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    """The built site served on 127.0.0.1 by a static server thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(StrictSiteHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for this module (Playwright's sync API holds the main thread's
    asyncio loop while it runs, so it must stop before the suite's async tests start theirs)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed (pip install playwright)")
    found = shutil.which(CHROMIUM)
    if not found or not os.access(found, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=)")
    assert found is not None
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=found, headless=True, args=CHROMIUM_ARGS
            )
        except Error as exc:
            unavailable(f"Chromium at {found} did not start: {exc.message.splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


class OfflinePage:
    """A page where every request to a host other than 127.0.0.1 is aborted and recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.external: list[tuple[str, str]] = []  # (resource type, URL)
        self.errors: list[str] = []
        page.add_init_script(CSP_RECORDER)
        page.route("**/*", self._route)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _route(self, route: Any) -> None:
        request = route.request
        if urlsplit(request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.external.append((request.resource_type, request.url))
            route.abort()

    def violations(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.page.evaluate("window.__csp_violations")
        return found

    def assert_self_contained(self) -> None:
        """Only the theme's own requests tried to leave, and no script was refused."""
        assert self.errors == []
        assert [url for _, url in self.external if urlsplit(url).hostname not in THEME_HOSTS] == []
        assert [kind for kind, _ in self.external if kind == "script"] == []
        refused = [
            v
            for v in self.violations()
            if v["directive"].startswith("script")
            or urlsplit(v["blocked"]).hostname not in THEME_HOSTS
        ]
        assert refused == []


@pytest.fixture
def offline(browser: Browser) -> Iterator[OfflinePage]:
    context = browser.new_context(viewport={"width": 600, "height": 900})
    context.set_default_timeout(DEADLINE_SECONDS * 1000)
    try:
        yield OfflinePage(context.new_page())
    finally:
        context.close()


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for key in ("children", "shadowRoots"):
        for child in node.get(key, ()):
            yield from _walk(child)


def _attributes(node: dict[str, Any]) -> dict[str, str]:
    flat = node.get("attributes", [])
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_no_page_loads_a_script_from_another_host(site: Path) -> None:
    assert (site / "assets/javascripts/mermaid/mermaid.tiny.js").is_file()
    assert (site / "assets/javascripts/mermaid/LICENSE").is_file()
    pages = sorted(site.rglob("*.html"))
    assert site / "how-it-works/index.html" in pages
    for page in pages:
        sources = SCRIPT_SRC.findall(page.read_text(encoding="utf-8"))
        assert sources, page
        for source in sources:
            assert not re.search(r"unpkg|jsdelivr|cdn", source, re.IGNORECASE), (page, source)
            assert urlsplit(source).scheme == "" and not source.startswith("//"), (page, source)
    html = (site / "how-it-works/index.html").read_text(encoding="utf-8")
    assert "../assets/javascripts/mermaid/mermaid.tiny.js" in SCRIPT_SRC.findall(html)
    assert '<pre class="mermaid">' in html


def test_sequence_diagram_renders_offline_under_a_strict_csp(
    site_url: str, offline: OfflinePage
) -> None:
    page = offline.page
    response = page.goto(f"{site_url}/how-it-works/")
    assert response is not None and response.ok
    assert "script-src 'self' 'sha256-" in (response.headers["content-security-policy"])
    # Material replaces <pre class="mermaid"> with a <div class="mermaid"> whose (closed)
    # shadow root holds the rendered SVG.
    page.wait_for_selector("div.mermaid", state="attached")
    assert page.locator("pre.mermaid").count() == 0
    offline.assert_self_contained()

    cdp = page.context.new_cdp_session(page)
    document = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
    diagrams = [
        node
        for node in _walk(document["root"])
        if node.get("localName") == "div" and _attributes(node).get("class") == "mermaid"
    ]
    assert len(diagrams) == 1
    svgs = [
        node
        for root in diagrams[0].get("shadowRoots", [])
        for node in _walk(root)
        if node.get("localName") == "svg"
    ]
    assert svgs, "the mermaid block did not render to an <svg>"
    assert _attributes(svgs[0]).get("aria-roledescription") == "sequence"
    text = " ".join(node.get("nodeValue", "") for node in _walk(svgs[0]))
    assert "AttributionMiddleware" in text
    assert "POST /track/lead" in text
    box = page.locator("div.mermaid").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100


def test_configuration_tables_keep_option_names_whole(site_url: str, offline: OfflinePage) -> None:
    page = offline.page
    page.goto(f"{site_url}/configuration/")
    offline.assert_self_contained()
    # Each identifier in a table (an option name such as `queue_full_timeout`) is one box:
    # it was not broken across lines, even in a 600 px wide window.
    boxes: list[tuple[str, int]] = page.evaluate(
        """() => [...document.querySelectorAll(".md-typeset table code")]
            .filter((code) => /^[\\w.]+=?$/.test(code.textContent))
            .map((code) => [code.textContent, code.getClientRects().length])"""
    )
    assert ["queue_full_timeout", 1] in boxes
    assert [(name, count) for name, count in boxes if count != 1] == []


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


# Every example of docs/testing.md is a whole test file (each has at least one test).
TESTING_EXAMPLES = [b for b in python_blocks(REPO_ROOT / "docs/testing.md") if "def test_" in b]


@pytest.mark.parametrize(
    "example", TESTING_EXAMPLES, ids=lambda b: re.findall(r"def (test_\w+)", b)[0]
)
def test_each_testing_md_example_passes(example: str, tmp_path: Path) -> None:
    """Each example in docs/testing.md runs as is, under pytest, warnings as errors."""
    if "fastapi" in example:
        pytest.importorskip("fastapi")
    (tmp_path / "test_example.py").write_text(example, encoding="utf-8")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"),
            # Starlette's test client warns at import that it prefers httpx2 to httpx; the
            # page shows readers this same precise filter.
            "-W",
            "ignore:Using `httpx` with `starlette.testclient`"
            ":starlette.exceptions.StarletteDeprecationWarning",
            *("--rootdir", str(tmp_path), str(tmp_path / "test_example.py")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = len(re.findall(r"^\s*(?:async )?def test_", example, re.MULTILINE))
    assert f"{tests} passed" in result.stdout, result.stdout


def test_testing_md_documents_every_testing_tool() -> None:
    text = (REPO_ROOT / "docs/testing.md").read_text(encoding="utf-8")
    from asgi_attribution import testing

    for name in ("attribution_events", "capture_events", "MemoryTransport", "FakeProvider"):
        assert f"`{name}" in text, name
    assert "serve_in_thread" in text and "playwright" in text and "pytest11" in text
    # The page's examples use the tools themselves, not a description of them.
    examples = "\n".join(TESTING_EXAMPLES)
    for name in ("attribution_events", "capture_events", "MemoryTransport", "serve_in_thread"):
        assert name in examples, name
    assert {"capture_events", "MemoryTransport", "FakeProvider", "serve_in_thread"} <= set(
        testing.__all__
    )


README_RUNNER = """
import sys
from asgi_attribution.testing import capture_events

source = open(sys.argv[1], encoding="utf-8").read()
with capture_events():  # nothing leaves the process: the events are recorded here
    exec(compile(source, sys.argv[2], "exec"), {"__name__": "__readme__"})
"""


@pytest.mark.parametrize("index", range(len(python_blocks(REPO_ROOT / "README.md"))))
def test_each_readme_python_block_runs_as_written(index: int, tmp_path: Path) -> None:
    """Each ```python block of the README runs on its own, as written (its events captured)."""
    block = python_blocks(REPO_ROOT / "README.md")[index]
    if "fastapi" in block:
        pytest.importorskip("fastapi")
    (tmp_path / "block.py").write_text(block, encoding="utf-8")
    (tmp_path / "runner.py").write_text(README_RUNNER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DUB_API_KEY", "PIMMS_API_KEY")}
    result = subprocess.run(
        [sys.executable, "-W", "error", "runner.py", "block.py", f"README.md block {index + 1}"],
        cwd=tmp_path,  # a block's relative paths (events.db) land here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"block {index + 1}:\n{block}\n{result.stderr}"


LINKED = re.compile(r"""<(?:link|script)\b[^>]*\s(?:href|src)=["']?([^"'\s>]+)""", re.IGNORECASE)
FONT_OR_CDN = re.compile(r"fonts\.googleapis|fonts\.gstatic|cdn|unpkg", re.IGNORECASE)


def test_no_page_loads_fonts_or_scripts_from_a_cdn(site: Path) -> None:
    """No page links a stylesheet, font or script from another host (``theme.font: false``)."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"fonts\.googleapis|fonts\.gstatic", text), page
        for linked in LINKED.findall(text):
            remote = urlsplit(linked).scheme in ("http", "https") or linked.startswith("//")
            assert not (remote and FONT_OR_CDN.search(linked)), (page, linked)
    for sheet in sorted(site.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"@import\s+url\([\"']?(https?:)?//", text), sheet


def test_outbox_md_lists_every_command_and_option_of_the_cli() -> None:
    """docs/outbox.md's CLI table names each command of ``outbox --help`` and its options."""
    from asgi_attribution._cli.outbox_parser import build_parser

    text = (REPO_ROOT / "docs/outbox.md").read_text(encoding="utf-8")
    section = text.split("## The command line", 1)[1].split("Exit codes a script can rely on", 1)[0]
    rows = {
        line.split("`")[1].split()[0]: line
        for line in section.splitlines()
        if line.startswith("| `")
    }
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert set(rows) == set(commands.choices)  # type: ignore[arg-type]
    store = {
        "--path",
        "--redis-url",
        "--postgres-url",
        "--redis-prefix",
        "--allow-eviction",
        "--postgres-table",
        "--help",
        "-h",
    }
    for name, sub in commands.choices.items():  # type: ignore[union-attr]
        options = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
        missing = sorted(o for o in options - store if o not in rows[name])
        assert missing == [], f"{name}: {missing}"
    for option in store - {"--help", "-h"}:
        assert f"`{option}" in section, option


@pytest.fixture
def wide(browser: Browser) -> Iterator[OfflinePage]:
    """A 1280 px wide window, as on a laptop."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(DEADLINE_SECONDS * 1000)
    try:
        yield OfflinePage(context.new_page())
    finally:
        context.close()


# The smallest message text readable on a laptop screen, in CSS pixels (the body text is 16 px;
# Material's own small print is about 12).
READABLE_PX = 12.0


def test_the_sequence_diagram_is_readable_at_1280_px(site_url: str, wide: OfflinePage) -> None:
    page = wide.page
    page.goto(f"{site_url}/how-it-works/")
    page.wait_for_selector("div.mermaid", state="attached")
    cdp = page.context.new_cdp_session(page)
    document = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
    texts = [
        node
        for node in _walk(document["root"])
        if node.get("localName") == "text" and "messageText" in _attributes(node).get("class", "")
    ]
    assert len(texts) >= 10, "the diagram's messages were not found"
    heights = []
    for node in texts:  # inside a closed shadow root: measured through the protocol
        handle = cdp.send("DOM.resolveNode", {"backendNodeId": node["backendNodeId"]})
        answer = cdp.send(
            "Runtime.callFunctionOn",
            {
                "objectId": handle["object"]["objectId"],
                "functionDeclaration": "function () { return this.getBoundingClientRect().height }",
                "returnByValue": True,
            },
        )
        heights.append(round(answer["result"]["value"], 1))
    print(f"message text heights at 1280 px: {sorted(heights)}")
    assert min(heights) >= READABLE_PX, sorted(heights)
