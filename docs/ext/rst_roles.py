"""A griffe extension for the API reference: the library's docstrings use
reStructuredText roles (``:class:`~gso_analytics.Analytics```), which Markdown would
print as ``:class:`` followed by the name. A role naming the public API (a name
``gso_analytics`` exports, or a public member of one) becomes a cross-reference to its
entry in the reference, which ``mkdocs build --strict`` checks; any other role (a
private module, a bare method name) becomes inline code of its target, shortened as
Sphinx does for a leading ``~``. The docstrings that editors and ``help()`` show stay
as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import gso_analytics

ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
#: What the API reference renders under ``gso_analytics.<name>``: the package's exports
#: (the two constants are rendered from ``gso_analytics.counters``).
PUBLIC = frozenset(gso_analytics.__all__) - {"DAILY_FIELDS", "DEFAULT_COUNTERS"}


def _identifier(target: str) -> str | None:
    """``gso_analytics.model.FlushBatch.parts`` -> ``gso_analytics.FlushBatch.parts``."""
    parts = target.lstrip(".").split(".")
    for index, part in enumerate(parts):
        if part in PUBLIC:
            rest = parts[index:]
            if any(name.startswith("_") for name in rest):
                return None
            return ".".join(["gso_analytics", *rest])
    return None


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")
    identifier = _identifier(target)
    return f"[`{shown}`][{identifier}]" if identifier else f"`{shown}`"


def plain_roles(text: str) -> str:
    """``:meth:`~gso_analytics.Analytics.stats``` -> ``[`stats`][gso_analytics.Analytics.stats]``;
    ``:mod:`.flusher``` -> ```flusher```."""
    return ROLE.sub(_replace, text)


class RstRoles(griffe.Extension):
    """Rewrites every loaded docstring once, before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
