"""MkDocs hook: the API reference lists each module's ``__all__`` by kind, classes first.

mkdocstrings renders a module's members grouped by category in a fixed order, attributes
first, so ``::: asgi_attribution`` opened the reference with ``DUB``, ``PIMMS`` and
``__version__``. Instead, a line of its own such as::

    <!-- members: asgi_attribution.webhooks heading_level=3 -->

is replaced by one ``:::`` block per name in that module's ``__all__`` (read statically with
Griffe, so nothing is imported), under a heading per group: Classes, Exceptions, Functions,
then Constants and types; within a group the order is ``__all__``'s. A name added to
``__all__`` appears without editing the page; a module without ``__all__``, or a name that
does not resolve, is a warning (an error under ``mkdocs build --strict``).

``except=asgi_attribution`` leaves out the names that module's ``__all__`` also lists (so
``asgi_attribution.transports`` shows only what the top-level package does not already show).
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)

MARKER = re.compile(
    r"^<!-- members: (?P<module>[\w.]+)(?: heading_level=(?P<level>[1-5]))?"
    r"(?: except=(?P<skip>[\w.]+))? -->[ \t]*$",
    re.MULTILINE,
)
GROUPS = ("Classes", "Exceptions", "Functions", "Constants and types")


def _is_exception(cls: griffe.Class, depth: int = 0) -> bool:
    for base in cls.bases:
        builtin = getattr(builtins, str(base), None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return True
    if depth > 20:
        return False
    return any(_is_exception(base, depth + 1) for base in cls.resolved_bases)


def _group(member: griffe.Object | griffe.Alias) -> str:
    target = member.final_target if isinstance(member, griffe.Alias) else member
    if isinstance(target, griffe.Class):
        return "Exceptions" if _is_exception(target) else "Classes"
    if isinstance(target, griffe.Function):
        return "Functions"
    return "Constants and types"


def _module(module_path: str, load: Any) -> Any:
    package = load(module_path.split(".")[0])
    return package if "." not in module_path else package[module_path.split(".", 1)[1]]


def _members(module_path: str, level: int, load: Any, skip: str | None = None) -> str:
    module = _module(module_path, load)
    if not module.exports:
        log.warning("%s has no __all__: nothing to list in the API reference", module_path)
        return ""
    shown = {str(name) for name in _module(skip, load).exports or ()} if skip else set()
    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    for export in module.exports:
        name = str(export)
        if name in shown:
            continue
        try:
            groups[_group(module[name])].append(name)
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError) as exc:
            log.warning("%s.__all__ names %r, which does not resolve: %r", module_path, name, exc)
    blocks = []
    for group, names in groups.items():
        if not names:
            continue
        blocks.append(f"{'#' * level} {group}\n")
        blocks.extend(
            f"::: {module_path}.{name}\n    options:\n      heading_level: {level + 1}\n"
            for name in names
        )
    return "\n".join(blocks)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    if "<!-- members: " not in markdown:
        return markdown
    src = Path(config.config_file_path).parent / "src"
    packages: dict[str, griffe.Object | griffe.Alias] = {}

    def load(package: str) -> griffe.Object | griffe.Alias:
        if package not in packages:
            packages[package] = griffe.load(package, search_paths=[str(src)])
        return packages[package]

    return MARKER.sub(
        lambda match: _members(match["module"], int(match["level"] or 2), load, match["skip"]),
        markdown,
    )
