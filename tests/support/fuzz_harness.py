"""Fuzz harness: hostile requests through AttributionMiddleware, compared with the bare app.

One input (a :class:`Case`, or raw bytes decoded into one) is sent through a real Starlette app
twice, with and without the middleware, as raw ASGI calls. The properties checked:

- no exception escapes the middleware that the bare app did not raise itself;
- status, the app's headers (its own Set-Cookie included) and body are byte-identical, except
  for Set-Cookie headers the middleware appends after them;
- every appended Set-Cookie is one of ours, its value matches the click-id grammar (or the
  signed token's) and its attributes are well-formed;
- the attribution the app sees carries a valid click id or none (none without consent);
- nothing is logged at error level unexpectedly, and no log line carries a raw CR or LF.

CI runs it through hypothesis (``tests/test_fuzz.py``). The long run, from the repository root::

    .venv/bin/python -m tests.support.fuzz_harness --seconds 600             # mutational
    .venv/bin/python -m tests.support.fuzz_harness --seconds 600 --atheris   # coverage-guided

A failing input is written to ``$TMPDIR/asgi-attribution-fuzz/`` (``--out``); reproduce it
with ``--replay FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_attribution import AttributionMiddleware, MemoryTransport, Tracker, get_attribution

SECRETS = ["fuzz-secret-new", "fuzz-secret-old"]
PATHS = ["/", "/app-cookie", "/own-click", "/boom", "/ws", "/missing"]


def _raise_consent(connection: HTTPConnection) -> bool:
    raise LookupError("consent store down")


async def _async_consent(connection: HTTPConnection) -> bool:
    return connection.cookies.get("consent") != "no"


# Middleware configurations the fuzzer picks from; "errors" is the error log it expects.
CONFIGS: list[dict[str, Any]] = [
    {},
    {"provider": "pimms"},
    {"signing_secrets": SECRETS, "attribution_model": "first-click"},
    {"consent": lambda c: c.cookies.get("consent") == "yes", "honor_gpc": True},
    {"consent": _raise_consent, "errors": "consent callable failed"},
    {"consent": _async_consent, "signing_secrets": "one", "cookie_httponly": True},
    {"cookie_domain": None, "cookie_samesite": "none", "cookie_path": "/app"},
]

# Our cookies, exactly as the middleware may write them.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ATTRS = (
    rf"; Max-Age=\d+; Path=/[!#-:<-~]*(?:; Domain=\.?{_LABEL}(?:\.{_LABEL})+)?"
    r"; SameSite=(?:Lax|Strict|None)(?:; Secure)?(?:; HttpOnly)?"
)
CLICK = r"[A-Za-z0-9_-]{1,64}"
OUR_COOKIE = re.compile(
    rf"(?P<name>dub_id|pimms_id)=(?P<click>{CLICK}){_ATTRS}"
    rf"|(?P<sname>dub_id_sig|pimms_id_sig)=(?P<sclick>{CLICK})\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
    rf"{_ATTRS}"
)
CLICK_RE = re.compile(CLICK)


@dataclass
class Case:
    """One request: scope type, middleware config, path, query and headers (raw bytes)."""

    kind: str = "http"  # http, websocket, lifespan or an unknown type
    config: int = 0
    path: str = "/"
    scheme: str = "http"
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    state: dict[str, Any] | None = None


class Finding(AssertionError):
    """A property of the middleware did not hold for a case."""


# -- the app -----------------------------------------------------------------------------------

_seen: list[Any] = []


def _observe(connection: HTTPConnection) -> None:
    try:
        _seen.append(get_attribution(connection))
    except RuntimeError:  # the bare app, without the middleware
        _seen.append(None)


async def home(request: Request) -> Response:
    _observe(request)
    return PlainTextResponse("home", headers={"x-app": "1", "cache-control": "no-store"})


async def app_cookie(request: Request) -> Response:
    _observe(request)
    response = PlainTextResponse("cookie")
    response.set_cookie("session", "s1; weird", httponly=True)
    response.set_cookie("prefs", "dark", max_age=60, samesite="strict")
    response.headers.append("x-multi", "a")
    response.headers.append("x-multi", "b")
    return response


async def own_click(request: Request) -> Response:
    # The app clears the click itself: the middleware must add none of its cookies.
    _observe(request)
    response = PlainTextResponse("own")
    # Written by hand: delete_cookie() stamps the current time, which would differ between runs.
    response.headers.append("set-cookie", 'dub_id=""; Max-Age=0; Path=/')
    response.headers.append("set-cookie", 'pimms_id=""; Max-Age=0; Path=/')
    return response


async def boom(request: Request) -> Response:
    _observe(request)
    raise KeyError("the app's own bug")


async def ws(websocket: WebSocket) -> None:
    _observe(websocket)
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def build_app() -> Starlette:
    """The app under test: plain routes that set their own headers and cookies."""
    return Starlette(
        routes=[
            Route("/", home),
            Route("/app-cookie", app_cookie),
            Route("/own-click", own_click),
            Route("/boom", boom),
            WebSocketRoute("/ws", ws),
        ]
    )


def _wrapped(config: int) -> tuple[AttributionMiddleware, str | None]:
    options = dict(CONFIGS[config])
    errors = options.pop("errors", None)
    provider = options.pop("provider", "dub")
    tracker = Tracker(provider, transport=MemoryTransport())
    return AttributionMiddleware(build_app(), tracker, **options), errors


_apps: dict[int, tuple[AttributionMiddleware, str | None]] = {}
_bare = build_app()


# -- one run -----------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _scope(case: Case) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": case.kind, "asgi": {"version": "3.0"}}
    if case.kind in ("http", "websocket"):
        path = case.path
        scope.update(
            http_version="1.1",
            scheme=case.scheme if case.kind == "http" else case.scheme.replace("http", "ws"),
            path=path,
            raw_path=path.encode(),
            root_path="",
            query_string=case.query,
            headers=list(case.headers),
            server=("testserver", 80),
            client=("127.0.0.1", 1234),
        )
        if case.kind == "http":
            scope["method"] = "GET"
        else:
            scope["subprotocols"] = []
    if case.state is not None:
        scope["state"] = case.state
    return scope


async def _call(app: Any, case: Case) -> tuple[list[dict[str, Any]], BaseException | None]:
    sent: list[dict[str, Any]] = []
    if case.kind == "websocket":
        inbox = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    elif case.kind == "lifespan":
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    else:
        inbox = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        # Copy: a middleware that mutated a message after sending it would hide here.
        message = dict(message)
        if "headers" in message:
            message["headers"] = [(bytes(n), bytes(v)) for n, v in message["headers"]]
        sent.append(message)

    try:
        await app(_scope(case), receive, send)
    except Exception as exc:
        return sent, exc
    return sent, None


async def check(case: Case) -> None:
    """Run ``case`` with and without the middleware; raise :class:`Finding` if a property fails."""
    if case.config not in _apps:
        _apps[case.config] = _wrapped(case.config)
    app, expected_error = _apps[case.config]
    logger = logging.getLogger("asgi_attribution")
    records = _Records()
    logger.addHandler(records)
    try:
        _seen.clear()
        bare, bare_exc = await _call(_bare, case)
        _seen.clear()
        wrapped, exc = await _call(app, case)
        seen = list(_seen)
    finally:
        logger.removeHandler(records)

    if type(exc) is not type(bare_exc):
        raise Finding(f"exception changed: bare {bare_exc!r}, with middleware {exc!r}") from exc
    _check_logs(records.records, expected_error)
    if len(wrapped) != len(bare):
        raise Finding(f"message count changed: {bare} -> {wrapped}")
    ours: list[str] = []
    for before, after in zip(bare, wrapped, strict=True):
        if before.get("type") == "http.response.start" and after.get("type") == before["type"]:
            ours = _check_start(before, after)
        elif before != after:
            raise Finding(f"message changed: {before!r} -> {after!r}")
    for attribution in seen:
        _check_attribution(attribution, case, ours)


def _check_start(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    if before["status"] != after["status"]:
        raise Finding(f"status changed: {before['status']} -> {after['status']}")
    if set(before) != set(after):
        raise Finding(f"response start keys changed: {set(before)} -> {set(after)}")
    app_headers, headers = before["headers"], after["headers"]
    if headers[: len(app_headers)] != app_headers:
        raise Finding(f"app headers changed: {app_headers!r} -> {headers!r}")
    ours = []
    for name, value in headers[len(app_headers) :]:
        text = value.decode("latin-1")
        if name != b"set-cookie" or not OUR_COOKIE.fullmatch(text):
            raise Finding(f"unexpected header added: {name!r}: {value!r}")
        ours.append(text)
    names = [c.split("=", 1)[0] for c in ours]
    if len(set(names)) != len(names) or (names and not names[0].endswith("_id")):
        raise Finding(f"our cookies are duplicated or out of order: {ours!r}")
    app_cookies = [v for n, v in app_headers if n == b"set-cookie"]
    if ours and any(v.startswith((b"dub_id=", b"pimms_id=")) for v in app_cookies):
        raise Finding(f"cookie set over the app's own: {ours!r}")
    return ours


def _check_attribution(attribution: Any, case: Case, ours: list[str]) -> None:
    if attribution is None:
        raise Finding("the app saw no attribution behind the middleware")
    click = attribution.click_id
    if click is not None and not CLICK_RE.fullmatch(click):
        raise Finding(f"invalid click id reached the app: {click!r}")
    for cookie in ours:
        match = OUR_COOKIE.fullmatch(cookie)
        assert match is not None
        if (match["click"] or match["sclick"]) != click or attribution.source != "query":
            raise Finding(f"cookie {cookie!r} disagrees with the attribution {attribution!r}")
    options = CONFIGS[case.config]
    if click is not None and (options.get("honor_gpc") or "consent" in options):
        gpc = any(n == b"sec-gpc" and v.strip() == b"1" for n, v in case.headers)
        if options.get("honor_gpc") and gpc:
            raise Finding(f"captured despite Sec-GPC: 1: {attribution!r}")
        try:
            allowed = await_value(options["consent"](HTTPConnection(_scope(case))))
        except LookupError:
            allowed = False
        if not allowed:
            raise Finding(f"captured without consent: {attribution!r}")
    if attribution.verified and not options.get("signing_secrets"):
        raise Finding("verified without signing secrets")


def await_value(value: Any) -> Any:
    """The value of a consent answer, awaiting it if needed (it never suspends here)."""
    if not asyncio.iscoroutine(value):
        return value
    try:
        value.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("consent coroutine suspended")


def _check_logs(records: list[logging.LogRecord], expected_error: str | None) -> None:
    for record in records:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            if expected_error is None or expected_error not in message:
                raise Finding(f"unexpected error log: {message}\n{record.exc_text or ''}")
        elif "\r" in message or "\n" in message:
            raise Finding(f"raw CR/LF in a log line: {message!r}")


def run(case: Case) -> None:
    """Check one case on a fresh event loop (synchronous, for hypothesis and the fuzzers)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(check(case))
    finally:
        loop.close()


# -- raw bytes -> case -------------------------------------------------------------------------

SEP = b"\xfe\xfe"
KINDS = ["http", "http", "http", "websocket", "lifespan", "extension"]


def decode(data: bytes) -> Case:
    """Turn arbitrary bytes into a request: 4 control bytes, then query and headers split on
    ``\\xfe\\xfe`` (``name:value``), the last value optionally repeated into a huge header."""
    head = data[:4].ljust(4, b"\0")
    chunks = data[4:].split(SEP)
    headers = []
    for chunk in chunks[1:]:
        name, _, value = chunk.partition(b":")
        headers.append((name.lower(), value))
    if head[3] & 0x80 and headers:
        name, value = headers[-1]
        headers[-1] = (name, (value or b"x") * (1 + (head[3] & 0x7F) * 1024 // max(len(value), 1)))
    return Case(
        kind=KINDS[head[0] % len(KINDS)],
        config=head[1] % len(CONFIGS),
        path=PATHS[head[2] % len(PATHS)] if KINDS[head[0] % len(KINDS)] != "websocket" else "/ws",
        scheme="https" if head[2] & 0x80 else "http",
        query=chunks[0],
        headers=headers,
        state={"shared": True} if head[3] & 0x40 else None,
    )


def fuzz_one(data: bytes) -> None:
    """Entry point for byte-level fuzzers (atheris, or the built-in loop below)."""
    run(decode(data))


SEEDS = [
    b"\0\0\0\0dub_id=abc\xfe\xfecookie:dub_id=old; dub_partner_data=%7B%7D\xfe\xfehost:www.ex.com",
    b"\0\2\1\0dub_id=new&dub_id=x\xfe\xfecookie:dub_id=old; dub_id_sig=old.AAAA.BBBB",
    b"\0\3\0\0dub_id=c1\xfe\xfecookie:consent=yes\xfe\xfesec-gpc:1",
    b"\0\1\1\x80pimms_id=p1&pimms-no-track\xfe\xfecookie:dclid=legacy\xfe\xfecookie:pimms_id=",
    b"\3\5\4\0dub_id=ws\xfe\xfecookie:dub_id=w; consent=no",
    b"\0\4\2\0dub_id=a%ff%00;b\xfe\xfehost:evil.com;Domain=x\xfe\xfecookie:\xff\x80dub_id=\xff",
    b"\0\6\0\xc0dub_id=" + b"A" * 64 + b"\xfe\xfecookie:dub_id=" + b"z" * 65,
]
DICTIONARY = [
    b"dub_id=", b"pimms_id=", b"dclid=", b"dub_id_sig=", b"pimms_id_sig=", b"dub_partner_data=",
    b"consent=yes", b"dub-no-track", b"pimms-no-track", b"; ", b"&", b"=", b"%", b"%00", b"%ff",
    b"\r\n", b"\xff", b"\x80", b'"', b"\\", b";", b",", b"cookie:", b"host:", b"sec-gpc:1",
    SEP, b"Path=/", b"Domain=", b".", b"_", b"-", b"\0",
]  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits: byte flips, inserts, deletions, dictionary tokens, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.choice(DICTIONARY)
        elif op == 4:
            other = rng.choice(SEEDS)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start : start + rng.randint(1, 32)]
        else:
            buf[pos:pos] = bytes(buf[pos : pos + rng.randint(1, 64)]) * rng.randint(1, 8)
    return bytes(buf[:65536])


def _save(data: bytes, error: BaseException, out: Path) -> Path:
    out.mkdir(exist_ok=True)
    path = out / (hashlib.sha256(data).hexdigest()[:16] + ".bin")
    path.write_bytes(data)
    print(f"FINDING {path}: {type(error).__name__}: {error}"[:2000], file=sys.stderr)
    return path


def builtin_loop(seconds: float, seed: int, out: Path) -> int:
    """Mutate a corpus for ``seconds``; keep inputs that changed behaviour as new seeds."""
    rng = random.Random(seed)
    corpus = list(SEEDS)
    deadline = time.monotonic() + seconds
    runs = findings = 0
    shapes: set[tuple[Any, ...]] = set()
    while time.monotonic() < deadline:
        data = mutate(rng.choice(corpus), rng)
        runs += 1
        try:
            fuzz_one(data)
        except Exception as exc:
            findings += 1
            _save(data, exc, out)
            continue
        # Crude feedback: keep inputs whose decoded shape is new (kind, config, path, sizes).
        case = decode(data)
        shape = (case.kind, case.config, case.path, len(case.headers), len(case.query) // 16)
        if shape not in shapes and len(corpus) < 5000:
            shapes.add(shape)
            corpus.append(data)
        if runs % 20000 == 0:
            print(f"{runs} runs, corpus {len(corpus)}, findings {findings}", file=sys.stderr)
    print(f"done: {runs} runs in {seconds:.0f}s, findings {findings}", file=sys.stderr)
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tests.support.fuzz_harness --seconds N [--atheris]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fuzz_harness", description=__doc__
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=None, help="seed of the built-in fuzzer")
    parser.add_argument("--atheris", action="store_true", help="use atheris (pip install atheris)")
    parser.add_argument("--replay", type=Path, help="run one saved input and show the failure")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "asgi-attribution-fuzz"
    )
    args = parser.parse_args(argv)
    # Debug logging on, so the debug paths (and their escaping) are fuzzed too.
    logging.getLogger("asgi_attribution").setLevel(logging.DEBUG)
    logging.getLogger("asgi_attribution").propagate = False
    if args.replay:
        fuzz_one(args.replay.read_bytes())
        print("no finding")
        return 0
    if args.atheris:
        import atheris  # type: ignore[import-not-found]

        out: Path = args.out

        def one(data: bytes) -> None:
            try:
                fuzz_one(data)
            except Exception as exc:
                _save(data, exc, out)
                raise

        # Seed corpus and dictionary, so coverage guidance starts from real-looking requests.
        corpus = out / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed_input in enumerate(SEEDS):
            (corpus / f"seed{i}").write_bytes(seed_input)
        tokens = out / "tokens.dict"
        tokens.write_text(
            "".join('"' + "".join(f"\\x{b:02x}" for b in t) + '"\n' for t in DICTIONARY)
        )
        atheris.instrument_all()
        atheris.Setup(
            [
                sys.argv[0],
                f"-max_total_time={int(args.seconds)}",
                "-max_len=65536",
                f"-artifact_prefix={out}/",
                f"-dict={tokens}",
                str(corpus),
            ],
            one,
        )
        atheris.Fuzz()
        return 0
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}", file=sys.stderr)
    return builtin_loop(args.seconds, seed, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
