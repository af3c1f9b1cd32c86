"""A local, fault-injecting stand-in for Dub's and PIMMS' tracking APIs.

:class:`FakeProvider` is an ASGI app that validates request bodies the way the real API does
(:mod:`.bodies`, from the limits in :mod:`asgi_attribution.limits`), records what it accepted,
and can be told to fail (:mod:`.faults`): 503s, 429s with a ``Retry-After`` header, slow answers
and dropped connections. Point a staging deployment at it, or run it under uvicorn in tests:

    provider = FakeProvider("dub", faults=Faults(error_rate=0.2, seed=1))
    with serve_in_thread(provider) as base_url:
        httpx.post(f"{base_url}/track/lead", json={...}, headers={"Authorization": "Bearer k"})
    assert provider.leads()[0]["eventName"] == "Sign up"

From a shell: ``asgi-attribution fake-provider --provider pimms --error-rate 0.1``.

Example:
    >>> from asgi_attribution.testing.fake_provider import FakeProvider, Faults
    >>> FakeProvider("dub", faults=Faults(fail_first=2)).faults.fail_first
    2
"""

from __future__ import annotations

from .app import FakeProvider
from .bodies import ProviderName
from .faults import ConnectionDropped, Faults, RetryAfterForm
from .routing import Received

__all__ = [
    "ConnectionDropped",
    "FakeProvider",
    "Faults",
    "ProviderName",
    "Received",
    "RetryAfterForm",
]
