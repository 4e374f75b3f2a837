"""acp: automatic channel pruning for PyTorch CNNs (feature-map clustering + budget-exact PSO).

The Python API is the product; the ``acp`` command is a thin shell over it. Heavier entry points are
imported lazily so ``import acp`` stays cheap:

- ``acp.search(config, out=DIR, flops=0.5)``: the whole search (stage 2, seeded by stage 1);
- ``acp.propose(settings, ...)``: stage 1 alone, widths by feature-map clustering;
- ``acp.finetune(arch, out_dir=...)``: retrain a searched architecture on its run's split;
- ``acp.evaluate(arch, data=...)``: accuracy, loss, MACs and params;
- ``acp.load_pruned(DIR)``, ``acp.materialize(base, arch, space)``, ``acp.create_model(name)``;
- ``acp.load_settings(path)`` / ``acp.RunSettings``: the configuration schema.
"""

from __future__ import annotations

__version__ = "0.1.0"

from acp.errors import UserError

# Imported on first use: ``import acp`` (and so every ``acp`` command, ``--help`` included) must not pay
# for torch before it is needed.
_LAZY = {
    "create_model": "acp.models",
    "Architecture": "acp.core.architecture",
    "ChannelSpace": "acp.core.space",
    "materialize": "acp.prune",
    "load_pruned": "acp.prune",
    "save_pruned": "acp.prune",
    "load_architecture": "acp.prune",
    "propose": "acp.workflows.propose",
    "finetune": "acp.workflows.finetune",
    "evaluate": "acp.workflows.evaluate",
    "run_pipeline": "acp.workflows.pipeline",
    "SearchResult": "acp.search.study",
    "RunSettings": "acp.settings",
    "load_settings": "acp.settings",
}

__all__ = ["UserError", "__version__", "create_model", "search", *_LAZY]


def __getattr__(name: str):
    import importlib

    if name == "search":  # the subpackage acp.search is itself callable: acp.search(config, out=...)
        return importlib.import_module("acp.search")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'acp' has no attribute {name!r}")
