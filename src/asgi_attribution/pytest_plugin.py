"""The pytest plugin (entry point ``pytest11``): the ``attribution_events`` fixture.

It imports only the capture, so every pytest run of a project that installs this package pays
for neither the fake provider nor uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing._capture import CapturedEvents, capture_events

__all__ = ["attribution_events"]


@pytest.fixture
def attribution_events() -> Iterator[CapturedEvents]:
    """Events tracked during the test, captured instead of delivered.

    Example:
        >>> def test_signup_tracks_a_lead(attribution_events):  # doctest: +SKIP
        ...     ...  # POST /signup with a dub_id cookie
        ...     assert attribution_events.leads[0].click_id == "abc123"
    """
    with capture_events() as events:
        yield events
