"""A griffe extension used by the docs build only (mkdocs.yml: mkdocstrings `extensions`).

The library's docstrings are Google style with two habits that griffe reads differently:

* an `Example:` section (singular) is read by griffe as a plain admonition, so its `>>>` lines are
  parsed as Markdown (`[...][-2:]` then looks like a broken link); it is renamed `Examples:`, which
  griffe renders as code;
* Sphinx roles (``:class:`~finetune_lib.data.records.Records` ``) are shown as inline code.

Nothing in the library changes; only the text griffe parses.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`~?([^`]+)`")


def _short(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).startswith(":") and "~" in match.group(0) else target
    return f"`{shown}`"


class LibraryDocstrings(griffe.Extension):
    """Rewrite `Example:` to `Examples:` and Sphinx roles to inline code before parsing."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(_short, value)
