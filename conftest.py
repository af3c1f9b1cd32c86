"""Doctests of ``src/`` run with the public API in their namespace, as a reader would import it."""

from __future__ import annotations

from typing import Any

import pytest

import asgi_attribution


@pytest.fixture(autouse=True)
def _public_names(doctest_namespace: dict[str, Any]) -> None:
    doctest_namespace.update(
        {name: getattr(asgi_attribution, name) for name in asgi_attribution.__all__}
    )
