"""A local, fault-injecting stand-in for Dub's and PIMMS' tracking APIs.

:class:`FakeProvider` is an ASGI app that validates request bodies the way the real API does
(with the limits in :mod:`asgi_attribution._limits`), records what it accepted, and can be told
to fail (:class:`Faults`): 503s, 429s with a ``Retry-After`` header, slow answers and dropped
connections. Point a staging deployment at it, or run it under uvicorn in tests:

    provider = FakeProvider("dub", faults=Faults(error_rate=0.2, seed=1))
    with serve_in_thread(provider) as base_url:
        httpx.post(f"{base_url}/track/lead", json={...}, headers={"Authorization": "Bearer k"})
    assert provider.leads()[0]["eventName"] == "Sign up"

It answers as the providers' servers do, not only as their specs say: a repeated lead is 200
with ``"link": null``, a click it does not know is 404 and still reserves the lead's key, a sale
without customer is 200 with nulls, windows last 7 days on a clock tests can step
(``advance``). It also serves ``/track/click`` (:class:`Click`), sends signed webhooks
(:class:`SentWebhook`) and keeps commissions for refunds.

From a shell: ``asgi-attribution fake-provider --provider pimms --error-rate 0.1``; with
``--rate-limit 600/60s`` it limits each API key as Dub does (:class:`RateLimit`).

Example:
    >>> from asgi_attribution.testing.fake_provider import FakeProvider, Faults
    >>> FakeProvider("dub", faults=Faults(fail_first=2)).faults.fail_first
    2
"""

from __future__ import annotations

from ._app import FakeProvider
from ._bodies import ProviderName
from ._clicks import Click
from ._faults import ConnectionDropped, Faults, RetryAfterForm
from ._ratelimit import RateLimit
from ._webhooks import SentWebhook
from ._wire import Received

__all__ = [
    "Click",
    "ConnectionDropped",
    "FakeProvider",
    "Faults",
    "ProviderName",
    "RateLimit",
    "Received",
    "RetryAfterForm",
    "SentWebhook",
]
