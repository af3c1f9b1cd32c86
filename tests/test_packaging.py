"""Every third-party module ``src/`` imports is a declared requirement; the version is in one place.

The imports are read with :mod:`ast` from every module of the package, imports inside functions
and under ``TYPE_CHECKING`` included, and each top-level module name is mapped to the
distribution that installs it with :func:`importlib.metadata.packages_distributions`. A module
that ``import asgi_attribution`` (or the CLI, ``sync``, ``webhooks``, ``stripe``, ``metrics``)
loads must import at its top level only the base dependencies: a user who installed the package
without extras gets a working import. Anything else (a lazy import, an integration module such
as ``litestar.py``) may come from an extra.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
PACKAGE = "asgi_attribution"
# What a user without extras imports: these and every module they load need base dependencies.
BASE_ENTRY_POINTS = (
    "asgi_attribution",
    "asgi_attribution._cli",
    "asgi_attribution.sync",
    "asgi_attribution.webhooks",
    "asgi_attribution.stripe",
    "asgi_attribution.metrics",
)


@dataclass(frozen=True)
class Import:
    """One absolute import of a third-party module found in a source file."""

    module: str  # the top-level name, e.g. "psycopg_pool"
    path: str
    line: int
    top_level: bool  # executed when the module is imported (not in a function or TYPE_CHECKING)


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a distribution name from requirement {requirement!r}"
    return normalize(match[1])


def declared() -> tuple[set[str], set[str]]:
    """The base requirements, and those of every extra, as normalized distribution names."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        requirement_name(r)
        for requirements in project["optional-dependencies"].values()
        for r in requirements
    }
    return base, extras - {normalize(project["name"])}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def third_party_imports(source: str, path: str) -> list[Import]:
    """Every absolute import in ``source`` of a module outside the stdlib and this package."""
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top and top not in sys.stdlib_module_names and top != PACKAGE:
                    found.append(Import(top, path, node.lineno, top_level))
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
            isinstance(node, ast.If) and _is_type_checking(node)
        )
        for child in ast.iter_child_nodes(node):
            visit(child, top_level and not nested)

    visit(ast.parse(source, filename=path), top_level=True)
    return found


def undeclared(
    imports: Iterable[Import],
    base: set[str],
    extras: set[str],
    base_modules: set[str],
    distributions: Mapping[str, list[str]],
) -> list[str]:
    """One line per import whose distribution is not declared where it has to be."""
    problems = []
    for imp in imports:
        dists = {normalize(d) for d in distributions.get(imp.module, [])}
        where = f"{imp.path}:{imp.line}: import of {imp.module!r}"
        if not dists:
            problems.append(f"{where} comes from no installed distribution")
        elif imp.top_level and imp.path in base_modules:
            if not dists & base:
                problems.append(f"{where} ({', '.join(sorted(dists))}) is not a base dependency")
        elif not dists & (base | extras):
            problems.append(f"{where} ({', '.join(sorted(dists))}) is in no requirement or extra")
    return problems


@cache
def packages_distributions() -> Mapping[str, list[str]]:
    # Scans every installed distribution's file list: about a second, so once per run.
    return metadata.packages_distributions()


def module_path(name: str) -> str:
    path = SRC.joinpath(*name.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return str(file.relative_to(REPO_ROOT))


@pytest.fixture(scope="module")
def base_modules() -> set[str]:
    """The package's modules loaded by the entry points a user without extras imports."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {BASE_ENTRY_POINTS!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == {PACKAGE!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    ).stdout
    return {module_path(name) for name in json.loads(out)}


def src_imports() -> list[Import]:
    return [
        imp
        for file in sorted((SRC / PACKAGE).rglob("*.py"))
        for imp in third_party_imports(file.read_text(), str(file.relative_to(REPO_ROOT)))
    ]


def test_every_third_party_import_of_src_is_declared(base_modules: set[str]) -> None:
    base, extras = declared()
    imports = src_imports()
    assert imports, "no third-party import found: the scan is broken"
    assert undeclared(imports, base, extras, base_modules, packages_distributions()) == []


def test_every_base_dependency_is_imported(base_modules: set[str]) -> None:
    # A base requirement nothing imports is installed by every user for nothing (httptools was).
    base, _ = declared()
    distributions = packages_distributions()
    used = {
        normalize(dist)
        for imp in src_imports()
        if imp.path in base_modules
        for dist in distributions.get(imp.module, [])
    }
    assert sorted(base - used) == []


def test_the_check_finds_an_undeclared_import(tmp_path: Path) -> None:
    # The same check on a module that imports PyYAML, installed (mkdocs needs it) but declared
    # nowhere: at the top level of a base module, and lazily in a function of another one.
    source = "import yaml\n\ndef later():\n    import yaml.constructor\n"
    base, extras = declared()
    assert "pyyaml" not in base | extras
    eager = third_party_imports(source, "src/asgi_attribution/_new.py")
    problems = undeclared(
        eager, base, extras, {"src/asgi_attribution/_new.py"}, packages_distributions()
    )
    assert problems == [
        "src/asgi_attribution/_new.py:1: import of 'yaml' (pyyaml) is not a base dependency",
        "src/asgi_attribution/_new.py:4: import of 'yaml' (pyyaml) is in no requirement or extra",
    ]
    # An extra's package is fine lazily but not at the top level of a base module.
    redis = third_party_imports("import redis\n", "src/asgi_attribution/_x.py")
    distributions = packages_distributions()
    assert undeclared(redis, base, extras, set(), distributions) == []
    assert undeclared(redis, base, extras, {"src/asgi_attribution/_x.py"}, distributions) == [
        "src/asgi_attribution/_x.py:1: import of 'redis' (redis) is not a base dependency"
    ]


def test_the_version_is_read_from_the_package_metadata() -> None:
    import asgi_attribution

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    source = (SRC / PACKAGE / "__init__.py").read_text()
    assert project["version"] not in source, "the version is written in __init__.py again"
    assert asgi_attribution.__version__ == metadata.version("asgi-attribution")
