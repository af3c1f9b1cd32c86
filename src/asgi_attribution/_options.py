"""Checks of constructor options: a wrong value fails at construction, naming the option.

Example:
    >>> flag("AttributionMiddleware", "capture_landing", "no")
    Traceback (most recent call last):
    ...
    TypeError: AttributionMiddleware(capture_landing=...) must be True or False, got 'no'
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["callable_or_none", "flag", "number", "share"]


def flag(owner: str, name: str, value: Any, *, none: bool = False) -> None:
    """``value`` must be a bool (or ``None`` when ``none``).

    Example:
        >>> flag("Tracker", "background", True)
    """
    if isinstance(value, bool) or (none and value is None):
        return
    allowed = "True, False or None" if none else "True or False"
    raise TypeError(f"{owner}({name}=...) must be {allowed}, got {value!r}")


def number(owner: str, name: str, value: Any, minimum: float, *, integer: bool = False) -> None:
    """``value`` must be a number (an ``int`` with ``integer``) of at least ``minimum``.

    Example:
        >>> number("Tracker", "timeout", "10", 0.001)
        Traceback (most recent call last):
        ...
        TypeError: Tracker(timeout=...) must be a number >= 0.001, got '10'
    """
    kinds = (int,) if integer else (int, float)
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{owner}({name}=...) must be {what} >= {minimum:g}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}({name}=...) must be {what} >= {minimum:g}, got {value!r}")


def callable_or_none(owner: str, name: str, value: Any, signature: str | None = None) -> None:
    """``value`` must be callable or ``None``; with ``signature``, callable as ``name(signature)``.

    ``signature`` lists the positional arguments it is called with (``"delivery, reason"``).
    Defaults, ``*args``, bound methods, :func:`functools.partial` and async functions all pass
    as long as the call would bind; a callable Python cannot inspect is taken as it is.

    Example:
        >>> callable_or_none("Tracker", "on_error", print, "delivery, exc")
        >>> def f(d): ...
        >>> callable_or_none("Tracker", "on_drop", f, "delivery, reason")
        Traceback (most recent call last):
        ...
        TypeError: Tracker(on_drop=...) is called as on_drop(delivery, reason), but f takes (d)
    """
    if value is None:
        return
    if not callable(value):
        raise TypeError(f"{owner}({name}=...) must be a callable or None, got {value!r}")
    if signature is None:
        return
    try:
        found = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        return
    try:
        found.bind(*signature.split(", "))
    except TypeError:
        what = getattr(value, "__name__", None) or type(value).__name__
        raise TypeError(
            f"{owner}({name}=...) is called as {name}({signature}), but {what} takes {found}"
        ) from None


def share(owner: str, name: str, value: Any) -> None:
    """``value`` must be a fraction in (0, 1].

    Example:
        >>> share("Tracker", "rate_limit_share", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: Tracker(rate_limit_share=...) must be a number in (0, 1], got 1.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}({name}=...) must be a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{owner}({name}=...) must be a number in (0, 1], got {value!r}")
