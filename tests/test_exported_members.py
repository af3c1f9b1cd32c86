"""``__all__`` is exactly what the package exports (httpx's ``test_exported_members.py``)."""

from __future__ import annotations

import types

import asgi_attribution
import asgi_attribution.testing
import asgi_attribution.transports
from asgi_attribution import _exceptions


def exported(module: types.ModuleType) -> list[str]:
    return sorted(
        (
            name
            for name, value in vars(module).items()
            if (not name.startswith("_") or name == "__version__")
            and not isinstance(value, types.ModuleType)
            and name != "annotations"  # from __future__
        ),
        key=str.casefold,
    )


def test_all_is_every_public_name_of_the_package() -> None:
    assert sorted(asgi_attribution.__all__, key=str.casefold) == exported(asgi_attribution)


def test_all_of_transports_is_every_public_name() -> None:
    module = asgi_attribution.transports
    assert sorted(module.__all__, key=str.casefold) == exported(module)


def test_every_name_of_all_is_importable() -> None:
    for module in (asgi_attribution, asgi_attribution.transports, asgi_attribution.testing):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_every_error_of_the_tree_is_exported_at_the_top() -> None:
    # The whole hierarchy of _exceptions.py is public API, as httpx exports all its errors.
    errors = {
        name
        for name, value in vars(asgi_attribution).items()
        if isinstance(value, type) and issubclass(value, asgi_attribution.AttributionError)
    }
    assert errors == set(_exceptions.__all__)
    assert errors <= set(asgi_attribution.__all__)


def test_webhook_errors_are_the_same_classes_from_the_webhooks_module() -> None:
    import asgi_attribution.webhooks as webhooks

    assert webhooks.InvalidSignatureError is asgi_attribution.InvalidSignatureError
    assert webhooks.InvalidWebhookError is asgi_attribution.InvalidWebhookError
    assert issubclass(webhooks.InvalidWebhookError, ValueError)
    assert {"InvalidSignatureError", "InvalidWebhookError"} <= set(webhooks.__all__)
