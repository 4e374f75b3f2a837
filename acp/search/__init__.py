"""Budget-exact particle swarm search over channel widths (see ``acp.search.study`` for the loop).

``search(config, out=..., flops=0.5)`` is the whole thing from a config; :class:`Study` runs the loop
for any evaluator; :class:`Budget` repairs candidates onto a budget.
"""

from __future__ import annotations

from acp.search.budget import Budget
from acp.search.run import search
from acp.search.settings import SearchSettings
from acp.search.study import SearchResult, Study

__all__ = ["Budget", "SearchResult", "SearchSettings", "Study", "search"]


class _CallableModule(__import__("types").ModuleType):
    """``acp.search`` is both this package and the function: ``acp.search(config, out=..., flops=0.5)``
    (the attribute ``acp.search`` becomes the package once it is imported, so the package is callable)."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
