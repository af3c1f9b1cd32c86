"""``customer_avatar`` as Dub's track routes take it (issue 27, item 4): a URL, bare base64 or a
``data:image/...;base64,...`` URI on a lead or a direct sale, sent as given; a URL only on a
customer update. Real sockets to the fake provider, which checks the bodies as Dub does.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from asgi_attribution import InvalidEventError, Tracker
from asgi_attribution._events import validate_event
from asgi_attribution.testing import FakeProvider, serve_in_thread
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

# The first bytes of a PNG file: what an app holding an uploaded avatar would encode.
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01").decode()

ACCEPTED = [
    "https://img.example/ada.png",
    PNG,
    f"data:image/png;base64,{PNG}",
    f"data:image/svg+xml;base64,{PNG}",
]

REFUSED = [
    "avatar.png",  # a file name, not a URL
    "ftp://img.example/ada.png",  # Dub's storage fetches http(s) only
    "data:text/plain;base64,aGk=",  # not an image
    "data:image/png;base64,abc",  # not base64 (length)
    f"{PNG}\n",  # a trailing newline is no base64 to Dub's pattern
    "data:image/png,rawbytes",  # not base64-encoded
]


@pytest.fixture(scope="module")
def dub() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(fake) as url:
        yield fake, url


@pytest.mark.parametrize("provider", ["dub", "pimms"])
async def test_a_lead_sends_every_avatar_dub_takes_as_given(provider: str) -> None:
    fake = FakeProvider(provider, api_key=KEY)  # type: ignore[arg-type]
    with serve_in_thread(fake) as url:
        async with Tracker(provider, api_key=KEY, base_url=url, background=False) as tracker:
            results = [
                await tracker.track_lead(
                    click_id=f"clk_{n}",
                    event_name="Sign up",
                    customer_external_id=f"u{n}",
                    customer_avatar=avatar,
                )
                for n, avatar in enumerate(ACCEPTED)
            ]
    # PIMMS' async answer does not say whether it recorded: its ledger does.
    assert [(r.status, r.warnings) for r in results] == [("sent", ())] * len(ACCEPTED)
    assert [lead["customerAvatar"] for lead in fake.leads()] == ACCEPTED


async def test_a_direct_sale_sends_a_base64_avatar_as_given(
    dub: tuple[FakeProvider, str],
) -> None:
    fake, url = dub
    avatar = f"data:image/png;base64,{PNG}"
    async with Tracker("dub", api_key=KEY, base_url=url, background=False) as tracker:
        result = await tracker.track_sale(
            customer_external_id="direct_1",
            amount=900,
            click_id="clk_direct",
            customer_avatar=avatar,
        )
    assert (result.status, result.outcome) == ("sent", "recorded")
    (sale,) = [s for s in fake.sales() if s["customerExternalId"] == "direct_1"]
    assert sale["customerAvatar"] == avatar


@pytest.mark.parametrize("avatar", REFUSED)
async def test_an_avatar_dub_would_drop_is_refused_at_the_call_by_name(
    avatar: str, dub: tuple[FakeProvider, str]
) -> None:
    with pytest.raises(InvalidEventError) as raised:
        validate_event(
            "lead",
            click_id="c1",
            event_name="Sign up",
            customer_external_id="u",
            customer_avatar=avatar,
        )
    assert raised.value.fields == ["customer_avatar"] and "base64" in str(raised.value)
    # Through the tracker it is what a visitor typed: the lead goes without it, with a warning.
    fake, url = dub
    external_id = f"refused_{REFUSED.index(avatar)}"
    async with Tracker("dub", api_key=KEY, base_url=url, background=False) as tracker:
        result = await tracker.track_lead(
            click_id="clk_r",
            event_name="Sign up",
            customer_external_id=external_id,
            customer_avatar=avatar,
        )
    assert (result.status, result.outcome) == ("sent", "recorded")
    (warning,) = result.warnings
    assert warning.startswith("customer_avatar: must be an http:// or https:// URL, base64")
    (lead,) = [lead for lead in fake.leads() if lead["customerExternalId"] == external_id]
    assert "customerAvatar" not in lead


@pytest.mark.parametrize("provider", ["dub", "pimms"])
async def test_a_customer_update_still_needs_a_url(provider: str) -> None:
    fake = FakeProvider(provider, api_key=KEY)  # type: ignore[arg-type]
    with serve_in_thread(fake) as url:
        async with Tracker(provider, api_key=KEY, base_url=url, background=False) as tracker:
            await tracker.track_lead(
                click_id="clk_1", event_name="Sign up", customer_external_id="u1"
            )
            refused = await tracker.track_customer(
                customer_id="u1", customer_name="Ada", customer_avatar=PNG
            )
            accepted = await tracker.track_customer(
                customer_id="u1", customer_avatar="https://img.example/ada.png"
            )
    assert refused.warnings == ("customer_avatar: must be an http:// or https:// URL",)
    assert (accepted.status, accepted.warnings) == ("sent", ())
    (customer,) = fake.customers()
    assert customer["avatar"] == "https://img.example/ada.png" and customer["name"] == "Ada"
