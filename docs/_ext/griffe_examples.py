"""Griffe extension for the docs build: adapt the package's docstrings to Markdown rendering.

The docstrings are Google style with habits Markdown does not know:

- a singular ``Example:`` heading. Griffe parses only the plural ``Examples:`` as code
  examples (the singular becomes an admonition whose ``>>>`` lines render as nested quotes);
- Sphinx roles such as ``:class:`Tracker```, which would show up literally;
- a reST literal block introduced by ``::`` at the end of a paragraph (``text::`` reads
  ``text:``; the indented block after it is already a Markdown code block).

This rewrites them before parsing; the source code is left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(?<=\S)::[ \t]*$(?=\n[ \t]*\n[ \t]+\S)", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` to ``Examples:``, turn Sphinx roles into inline code, ``text::`` into
    ``text:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            text = _EXAMPLE_HEADING.sub(r"\1Examples:", docstring.value)
            text = _LITERAL_BLOCK.sub(":", text)
            docstring.value = _SPHINX_ROLE.sub(r"`\1`", text)
