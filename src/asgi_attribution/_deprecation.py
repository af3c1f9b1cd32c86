"""Old option names, still accepted with a ``DeprecationWarning`` (one name per knob)."""

from __future__ import annotations

import warnings
from typing import TypeVar

__all__ = ["renamed"]

T = TypeVar("T")


def renamed(owner: str, old: str, old_value: T | None, new: str, value: T | None, default: T) -> T:
    """The value of option ``new``, taking its deprecated name ``old`` into account.

    Giving both is a ``TypeError`` (they could disagree); giving only ``old`` warns.

    Example:
        >>> renamed("HTTPTransport", "max_connections", None, "concurrency", 5, default=10)
        5
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     renamed("BackgroundTransport", "workers", 3, "concurrency", None, default=10)
        3
        >>> str(caught[0].message)
        'BackgroundTransport(workers=...) is deprecated: use concurrency=...'
    """
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"{owner}: give {new}= or its old name {old}=, not both")
    warnings.warn(
        f"{owner}({old}=...) is deprecated: use {new}=...", DeprecationWarning, stacklevel=3
    )
    return old_value
