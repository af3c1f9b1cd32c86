"""Griffe extension for the docs build: adapt the package's docstrings to Markdown rendering.

The docstrings are Google style with two habits Markdown does not know:

- a singular ``Example:`` heading. Griffe parses only the plural ``Examples:`` as code
  examples (the singular becomes an admonition whose ``>>>`` lines render as nested quotes);
- Sphinx roles such as ``:class:`Tracker```, which would show up literally.

This rewrites both before parsing; the source code is left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` to ``Examples:`` and turn Sphinx roles into inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            text = _EXAMPLE_HEADING.sub(r"\1Examples:", docstring.value)
            docstring.value = _SPHINX_ROLE.sub(r"`\1`", text)
