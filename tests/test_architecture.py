"""The shape of ``src/``: no import circles, modules by concept, no private names across modules.

Read from the source with ``ast`` (typing-only imports count too), so a circle hidden behind
``if TYPE_CHECKING:`` is caught as well as a real one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "asgi_attribution"
# A module is split where a reader would look for a second concept, never to stay under a count;
# past about 800 lines it says in its docstring why it is one concept.
MAX_LINES = 1000
LONG = 800
# The modules users import by name; every other module is internal and named with a ``_``.
PUBLIC_MODULES = {
    "asgi_attribution",
    "asgi_attribution.litestar",
    "asgi_attribution.metrics",
    "asgi_attribution.pytest_plugin",
    "asgi_attribution.stripe",
    "asgi_attribution.sync",
    "asgi_attribution.testing",
    "asgi_attribution.testing.fake_provider",
    "asgi_attribution.transports",
    "asgi_attribution.transports.outbox",
    "asgi_attribution.webhooks",
    "asgi_attribution.wsgi",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import of the package in ``name``."""
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom):
            target = resolve(name, node)
            if target.split(".")[0] == PACKAGE:
                found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
    return found


def edges(name: str) -> set[str]:
    """The modules whose import runs when ``name`` is imported (parents, submodules taken)."""
    out: set[str] = set()
    for target, names in imports(name):
        candidates = [target, *(f"{target}.{n}" for n in names)]
        for candidate in candidates:
            if candidate in MODULES:
                parts = candidate.split(".")
                # Parent packages run too; the root package is every module's parent.
                out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    # A module's own parent packages are already being imported: the normal package pattern.
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return {m for m in out - own if m in MODULES}


def test_no_import_circles() -> None:
    graph = {name: edges(name) for name in MODULES if name != PACKAGE}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why_it_is_one_concept(name: str) -> None:
    text = MODULES[name].read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"
    if lines > LONG:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        said = " ".join(docstring.lower().split())
        assert "one concept" in said, f"{name} has {lines} lines and does not say why"


def test_public_modules_are_the_documented_ones() -> None:
    public = {name for name in MODULES if not any(p.startswith("_") for p in name.split(".")[1:])}
    assert public == PUBLIC_MODULES


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{name}: {target}.{taken}"
        for name in MODULES
        for target, names in imports(name)
        for taken in names
        if taken.startswith("_") and taken != "__version__"
    ]
    assert private == []
