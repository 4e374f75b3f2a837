"""acp: automatic channel pruning for PyTorch CNNs (feature-map clustering + budget-exact PSO).

The Python API is the product; the ``acp`` command is a thin shell over it. Heavier entry points are
imported lazily so ``import acp`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

from acp.errors import UserError
from acp.models import create_model

_LAZY = {
    "Architecture": "acp.arch",
    "ChannelSpace": "acp.space",
    "materialize": "acp.prune",
    "load_pruned": "acp.prune",
    "save_pruned": "acp.prune",
    "finetune": "acp.finetune",
    "run_pipeline": "acp.pipeline",
    "SearchResult": "acp.search",
}

__all__ = ["UserError", "__version__", "create_model", "search", *_LAZY]


def __getattr__(name: str):
    if name == "search":  # the subpackage acp.search is itself callable: acp.search(config, out=...)
        import importlib

        return importlib.import_module("acp.search")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'acp' has no attribute {name!r}")
