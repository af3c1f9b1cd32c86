"""A cheaper ``__init__`` for the frozen dataclasses made once or twice per event.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``: 14,600
instructions for the nine fields of a ``TrackResult``, 24,000 for an outbox row's fifteen. The
one made here sets the instance dict in one step (7,100 for a ``TrackResult``), and the class
stays what ``dataclass`` made it: frozen, compared, ``replace``-able (bench/README.md).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

__all__ = ["dict_init"]

T = TypeVar("T")


def dict_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of frozen dataclass ``cls`` (without slots) by one that sets
    its instance dict at once; the signature and the defaults stay the same.

    Example:
        >>> @dict_init
        ... @dataclasses.dataclass(frozen=True)
        ... class Point:
        ...     x: int
        ...     y: int = 0
        >>> Point(1), dataclasses.replace(Point(1), y=2)
        (Point(x=1, y=0), Point(x=1, y=2))
    """
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__slots__") or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: dict_init needs no slots and no __post_init__")
    namespace: dict[str, object] = {"_set": object.__setattr__}
    signature, items = [], []
    for f in params:
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: dict_init takes plain fields only")
        if f.default is dataclasses.MISSING:
            signature.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
        items.append(f"{f.name!r}: {f.name}")
    source = (
        f"def __init__(self, {', '.join(signature)}):\n"
        f"    _set(self, '__dict__', {{{', '.join(items)}}})\n"
    )
    exec(source, namespace)  # as dataclasses builds its own __init__
    init = namespace["__init__"]
    setattr(init, "__qualname__", f"{cls.__qualname__}.__init__")  # noqa: B010
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses assigning to a method)
    return cls
