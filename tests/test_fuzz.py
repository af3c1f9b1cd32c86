"""Property-based tests: hostile requests through the middleware never change the app's answer.

Each example runs a real Starlette app with and without the middleware (raw ASGI calls) and
checks the properties listed in :mod:`tests.support.fuzz_harness`. Examples are bounded for CI; the
long run is ``python -m tests.support.fuzz_harness --seconds 600``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_attribution._signing import ClickSigner
from tests.support import fuzz_harness
from tests.support.fuzz_harness import CONFIGS, PATHS, SECRETS, Case

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def debug_logging() -> Iterator[None]:
    # The debug paths (and their escaping of hostile input) are part of what is fuzzed.
    logger = logging.getLogger("asgi_attribution")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)


COOKIE_NAMES = [
    "dub_id",
    "dub_id_sig",
    "pimms_id",
    "pimms_id_sig",
    "dclid",
    "dub_partner_data",
    "consent",
    "session",
]
QUERY_KEYS = ["dub_id", "pimms_id", "dub-no-track", "pimms-no-track", "utm_source", "dub_id "]

click_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
latin1_text = st.text(st.characters(max_codepoint=255), max_size=80)
signed_tokens = st.builds(
    lambda click, salt, key: ClickSigner(key, max_age=60, salt=salt).sign(click),
    click_ids,
    st.sampled_from(["asgi-attribution.click.dub", "asgi-attribution.click.pimms", "other"]),
    st.sampled_from([*SECRETS, "foreign-secret"]),
)
cookie_values = st.one_of(
    click_ids,
    signed_tokens,
    st.sampled_from(["yes", "no", "", '"quoted"', "%7B%22partner%22%3A%7B%7D%7D", "{}"]),
    latin1_text,
)
cookie_pairs = st.tuples(st.sampled_from(COOKIE_NAMES) | latin1_text, cookie_values)


@st.composite
def cookie_headers(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(cookie_pairs, max_size=8))
    separator = draw(st.sampled_from(["; ", ";", " ; ", ", "]))
    text = separator.join(f"{name}={value}" for name, value in pairs)
    return text.encode("latin-1")


@st.composite
def query_strings(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(QUERY_KEYS)).encode()
        value = draw(st.one_of(click_ids.map(str.encode), st.binary(max_size=40)))
        if draw(st.booleans()):
            value = quote_from_bytes(value).encode()
        parts.append(key if draw(st.booleans()) and b"track" in key else key + b"=" + value)
    return b"&".join(parts)


header_names = st.sampled_from(
    [b"cookie", b"cookie", b"host", b"sec-gpc", b"x-forwarded-host", b"accept"]
) | st.binary(min_size=1, max_size=20)
header_values = st.one_of(
    cookie_headers(),
    st.sampled_from([b"1", b"0", b" 1", b"www.example.com", b"evil.com;Domain=x", b"[::1]:80"]),
    st.binary(max_size=200),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["http", "http", "http", "websocket", "lifespan", "other"]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if headers and draw(st.integers(0, 9)) == 0:  # now and then, a huge header
        name, value = headers[-1]
        headers[-1] = (name, (value or b"a") * (200_000 // max(len(value), 1)))
    return Case(
        kind=kind,
        config=draw(st.integers(0, len(CONFIGS) - 1)),
        path="/ws" if kind == "websocket" else draw(st.sampled_from(PATHS)),
        scheme=draw(st.sampled_from(["http", "https"])),
        query=draw(query_strings()),
        headers=headers,
        state=draw(st.none() | st.just({"app": "shared"})),
    )


@FUZZ
@given(cases())
def test_hostile_requests_never_change_the_apps_answer(case: Case) -> None:
    fuzz_harness.run(case)


@FUZZ
@given(st.binary(max_size=4096))
def test_raw_bytes_never_change_the_apps_answer(data: bytes) -> None:
    fuzz_harness.fuzz_one(data)


@pytest.mark.parametrize("seed", range(len(fuzz_harness.SEEDS)))
def test_fuzz_seed_corpus(seed: int) -> None:
    fuzz_harness.fuzz_one(fuzz_harness.SEEDS[seed])


def test_the_harness_catches_an_unvalidated_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    """The properties can fail: with validation switched off, a hostile value is caught."""
    from asgi_attribution import _cookies as cookies
    from asgi_attribution import _landing as landing

    for module in (cookies, landing):
        monkeypatch.setattr(module, "valid_click_id", lambda value, where="": value or None)
    fuzz_harness._apps.clear()
    try:
        with pytest.raises(fuzz_harness.Finding):
            fuzz_harness.run(Case(query=b"dub_id=a%0d%0aSet-Cookie:%20x=y"))
    finally:
        fuzz_harness._apps.clear()


# -- the fast paths agree with the parsers they replace ---------------------------------------

READER_NAMES = ["dub_id", "dub_partner_data", "dub_id_sig"]
separators = st.sampled_from([";", "; ", " ;", "=", " ", '"', "\t", "\x1c", "\xa0", "\x85", ","])
cookie_text = st.lists(
    st.one_of(st.sampled_from([*READER_NAMES, "dub_id_", "xdub_id"]), separators, latin1_text),
    max_size=20,
).map("".join)


@FUZZ
@given(cookie_text)
def test_cookie_reader_agrees_with_starlettes_parser(header: str) -> None:
    from starlette.requests import cookie_parser

    from asgi_attribution._cookies import CookieReader

    # Starlette's parser, one cookie at a time, keeping the first of duplicates (as the
    # providers' scripts read them).
    expected: dict[str, str] = {}
    for piece in header.split(";"):
        for key, value in cookie_parser(piece).items():
            if key in READER_NAMES:
                expected.setdefault(key, value)
    assert CookieReader(READER_NAMES).read(header.encode("latin-1")) == expected


query_text = st.lists(
    st.one_of(st.sampled_from(["dub_id", "dub-no-track", "&", "=", "&&", ";"]), latin1_text),
    max_size=12,
).map("".join)


@FUZZ
@given(query_text)
def test_landing_fast_path_agrees_with_parse_qsl(query: str) -> None:
    from asgi_attribution import DUB
    from asgi_attribution._landing import LandingQuery

    raw = query.encode("latin-1")
    landing = LandingQuery(DUB)
    fast = landing.click(raw)
    # The slow path, forced with a harmless '+' in a parameter of its own.
    slow = landing.click(raw + b"&zz+=1") if "zz" not in query else fast
    assert fast == slow
