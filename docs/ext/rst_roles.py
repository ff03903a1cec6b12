"""A griffe extension for the API reference: the library's docstrings use
reStructuredText roles (``:class:`~gso_analytics.Analytics```), which Markdown would
print as ``:class:`` followed by the name. This renders each role as inline code
of its target, shortened as Sphinx does for a leading ``~``, without touching the
docstrings that editors and ``help()`` read as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")
    return f"`{shown}`"


def plain_roles(text: str) -> str:
    """``:meth:`~a.B.c``` -> ```c```; ``:mod:`.flusher``` -> ```flusher```."""
    return ROLE.sub(_code, text)


class RstRoles(griffe.Extension):
    """Rewrites every loaded docstring once, before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
