"""Every Dub request body our HTTP transport puts on the wire validates against Dub's OpenAPI spec.

The spec lives in ../shared/reference (outside the package). Where it is absent the test is
skipped with that reason; set ASGI_ATTRIBUTION_REFERENCE to point elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from asgi_attribution import Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread

pytestmark = pytest.mark.anyio


def reference_dir() -> Path | None:
    candidates = [
        os.environ.get("ASGI_ATTRIBUTION_REFERENCE"),
        Path(__file__).resolve().parents[2] / "shared" / "reference",
        "/work/shared/reference",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "dub-openapi.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def dub_spec() -> dict[str, Any]:
    folder = reference_dir()
    if folder is None:
        pytest.skip("Dub's OpenAPI spec not found (../shared/reference/dub-openapi.json)")
    spec: dict[str, Any] = json.loads((folder / "dub-openapi.json").read_text())
    return spec


def body_schema(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    template = "/customers/{id}" if path.startswith("/customers/") else path
    operation = spec["paths"][template][method.lower()]
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return schema


@pytest.fixture(scope="module")
def wire() -> Iterator[FakeProvider]:
    provider = FakeProvider("dub")
    with serve_in_thread(provider) as url:
        provider.url = url  # type: ignore[attr-defined]
        yield provider


async def test_every_dub_body_on_the_wire_matches_the_spec(
    dub_spec: dict[str, Any], wire: FakeProvider
) -> None:
    tracker = Tracker("dub", api_key="k", base_url=wire.url, background=False)  # type: ignore[attr-defined]
    full_customer = {
        "customer_name": "Ada Lovelace",
        "customer_email": "ada.lovelace+dub@example.co.uk",
        "customer_avatar": "https://img.example/ada.png",
    }
    async with tracker:
        await tracker.track_lead(click_id="c1", event_name="Sign up", customer_external_id="u1")
        await tracker.track_lead(
            click_id="c2",
            event_name="Trial started",
            customer_external_id="u2",
            event_quantity=3,
            mode="wait",
            metadata={"plan": "team", "seats": 3, "nested": {"a": [1, 2]}},
            **full_customer,
        )
        # Dub's deferred flow: a deferred lead with its click, then the real one without.
        await tracker.track_lead(
            click_id="c3", event_name="Deferred", customer_external_id="u3", mode="deferred"
        )
        await tracker.track_lead(click_id="", event_name="Activated", customer_external_id="u3")
        await tracker.track_lead(click_id="c4", event_name="Sign up", customer_external_id="u/2")
        await tracker.track_sale(customer_external_id="u1", amount=1)
        await tracker.track_sale(
            customer_external_id="u2",
            amount=4900,
            currency="EUR",
            event_name="Invoice paid",
            payment_processor="stripe",
            invoice_id="in_1",
            lead_event_name="Trial started",
            metadata={"coupon": "X"},
            click_id="c2",
            **full_customer,
        )
        await tracker.track_customer(customer_id="u/2", **full_customer)
        await tracker.track_customer(customer_id="u3", customer_name="Only a name")
    assert [r.status for r in wire.requests] == [200] * 9
    for request in wire.requests:
        assert request.body is not None
        schema = body_schema(dub_spec, request.method, request.path)
        jsonschema.validate(request.body, schema, cls=jsonschema.Draft7Validator)
        assert None not in request.body.values()


def test_schema_check_can_fail(dub_spec: dict[str, Any]) -> None:
    # The PIMMS key sent to Dub, a float quantity and a bad email must all be refused.
    schema = body_schema(dub_spec, "POST", "/track/lead")
    for bad in (
        {"clickId": "c", "eventName": "e", "externalId": "u"},
        {"clickId": "c", "eventName": "e", "customerExternalId": "u", "customerEmail": "nope"},
        {"clickId": "c", "eventName": "", "customerExternalId": "u"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft7Validator)
