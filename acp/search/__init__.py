"""Stage 2, generic: budget-exact particle swarm search over channel widths (``acp.search.study``).

:class:`Study` runs the loop (ask -> repair -> evaluate -> record -> tell -> checkpoint) for any evaluator;
it knows nothing of models or data. ``acp.search(config, out=..., flops=0.5)`` -- the whole search from
a run configuration -- is :func:`acp.workflows.search.search`; this package is callable as that function
(see ``_CallableModule``).
"""

from __future__ import annotations

import sys
import types

from acp.search.study import SearchResult, Study
from acp.settings import SearchSettings

__all__ = ["SearchResult", "SearchSettings", "Study"]


class _CallableModule(types.ModuleType):
    """``acp.search`` is both this package and the public function ``acp.search(config, out=...)``: once
    the package is imported, the attribute ``acp.search`` *is* the package, so the package is made
    callable. The call is the one place stage 2 reaches up to a workflow, by name at call time (the
    import-direction test allows exactly this)."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        from acp.workflows.search import search  # the public API entry point, not a dependency

        return search(*args, **kwargs)


def __getattr__(name: str):
    if name == "search":  # ``from acp.search import search`` keeps working: the same entry point
        from acp.workflows.search import search

        return search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallableModule
