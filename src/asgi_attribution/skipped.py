"""Calls that send nothing: their result is known when the call is made.

An organic lead (no click id) and a sale the provider would answer without recording (an
amount of zero) are reported at once, as a :class:`Tracking` that is ready.
"""

from __future__ import annotations

import logging

from .events import SaleEvent
from .pending import Tracking
from .providers import Provider
from .transports import TrackResult

__all__ = ["ready", "unrecorded_sale"]

logger = logging.getLogger("asgi_attribution")


async def _result(result: TrackResult) -> TrackResult:
    return result


def ready(result: TrackResult, what: str) -> Tracking:
    """A :class:`Tracking` of ``what`` (``"track_lead"``...) that sent nothing: ``result``.

    Example:
        >>> import asyncio
        >>> asyncio.run(ready(TrackResult("skipped", reason="no click id"), "track_lead")).status
        'skipped'
    """
    return Tracking(_result(result), None, what)


def unrecorded_sale(
    provider: Provider, event: SaleEvent, warnings: tuple[str, ...]
) -> TrackResult | None:
    """The skipped result of a sale ``provider`` would answer 200 and not record, else None.

    Example:
        >>> unrecorded_sale(DUB, SaleEvent(customer_external_id="u", amount=0), ()).reason
        'amount 0: dub records no sale for it'
        >>> unrecorded_sale(DUB, SaleEvent(customer_external_id="u", amount=1), ()) is None
        True
    """
    if event.amount > 0 or provider.records_zero_amounts:
        return None
    logger.warning(
        "sale %s not recorded by %s: amount_zero (not sent)",
        event.event_id,
        provider.name,
        extra={"event_id": event.event_id, "outcome_reason": "amount_zero"},
    )
    return TrackResult(
        "skipped",
        event,
        reason=f"amount {event.amount}: {provider.name} records no sale for it",
        outcome="not_recorded",
        outcome_reason="amount_zero",
        warnings=warnings,
    )
