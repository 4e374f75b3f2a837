"""The run directory (contract, DESIGN.md): every file name of a search run, once, and its readers.

``DIR/config.toml`` (the resolved settings), ``DIR/proposal.json`` (the clustering proposal and the channel
rankings), the search's own store (``history.sqlite``, ``checkpoint.json``, ``best_arch.json``,
``report.png``; named in :mod:`acp.search`), ``DIR/report.html`` (the run as a page, rewritten while it
runs: :mod:`acp.workflows.report`), and ``DIR/finetune/`` for ``acp run``'s retrained winner.

A multi-budget run (``[budget] flops = [0.7, 0.5]``) shares ``config.toml``, ``proposal.json`` (one proposal
per budget, one set of rankings), ``history.sqlite`` (a ``budget`` column) and ``report.html``; each budget's
search keeps its own checkpoint, ``best_arch.json``, ``report.png`` and ``finetune/`` in ``DIR/<label>/``
(:func:`budget_dir`, e.g. ``DIR/flops0.5/best_arch.json``), and ``acp run`` draws the finetuned curve
into ``DIR/curve.png``.
Only the workflows read or write these files; the stages get settings objects and data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from acp.errors import UserError
from acp.fileio import atomic_write_json, atomic_write_text
from acp.propose.criteria import RankedCriterion
from acp.search.store import CHECKPOINT_FILE, HISTORY_FILE, PREVIOUS_CHECKPOINT_FILE
from acp.search.study import BEST_ARCH_FILE, REPORT_FILE, RUN_STATE_FILES
from acp.settings import RunSettings, load_settings

CONFIG_FILE = "config.toml"
PROPOSAL_FILE = "proposal.json"
REPORT_HTML_FILE = "report.html"  # acp.workflows.report; `acp report DIR` rewrites it
LATENCY_FILE = "latency_table.json"  # the latency table a latency-budget search predicts with
FINETUNE_DIR = "finetune"
CURVE_FILE = "curve.png"  # acp run over several budgets: finetuned accuracy against MACs, with the base

__all__ = [
    "BEST_ARCH_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "CURVE_FILE",
    "FINETUNE_DIR",
    "HISTORY_FILE",
    "LATENCY_FILE",
    "PREVIOUS_CHECKPOINT_FILE",
    "PROPOSAL_FILE",
    "REPORT_FILE",
    "REPORT_HTML_FILE",
    "RUN_STATE_FILES",
    "budget_dir",
    "budget_dirs",
    "read_proposal",
    "read_rankings",
    "read_run_settings",
    "run_settings_near",
    "structure_only",
    "write_proposal",
    "write_run_settings",
]


def read_run_settings(run_dir: str | Path, *, flag: str = "--resume") -> RunSettings:
    """The settings a run was made with (``DIR/config.toml``); UserError when DIR is not a run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{flag} {run_dir}: no {CONFIG_FILE} there (not an acp run directory)")
    return load_settings(path)


def budget_dir(run_dir: str | Path, label: str | None) -> Path:
    """Where one budget's search keeps its files: ``DIR/<label>`` in a multi-budget run, ``DIR`` itself
    (label None) in a single-budget one."""
    return Path(run_dir) if label is None else Path(run_dir) / label


def budget_dirs(run_dir: str | Path, settings: RunSettings) -> dict[str | None, Path]:
    """``{label: folder}`` of every budget of the run, in the config's order (``{None: DIR}`` for one)."""
    if not settings.budget.is_multiple:
        return {None: Path(run_dir)}
    return {label: budget_dir(run_dir, label) for label in settings.budget.labels()}


def structure_only(settings: RunSettings) -> RunSettings:
    """The run's settings without its weights file: for rebuilding only the channel space (its groups do
    not depend on the weights), so nothing is read and no "weights not read" warning is logged."""
    import dataclasses

    return settings.replace(model=dataclasses.replace(settings.model, weights=None))


def write_run_settings(run_dir: Path, settings: RunSettings) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, settings.to_toml())


def run_settings_near(arch_path: str | Path) -> RunSettings | None:
    """The settings of the run an architecture file belongs to: ``config.toml`` beside it (a search run's
    ``best_arch.json``, or a finetune directory's own), the run's narrowed to one budget for a budget
    folder of a multi-budget run (``DIR/flops0.5/best_arch.json``) or, for ``finetune/`` of ``acp run``, the
    run's; None otherwise (a ``config.toml`` of some other tool one folder up is never read)."""
    arch_path = Path(arch_path)
    folder = arch_path if arch_path.is_dir() else arch_path.parent
    if (folder / CONFIG_FILE).is_file():
        return load_settings(folder / CONFIG_FILE)
    parent = folder.parent
    if (parent / CONFIG_FILE).is_file() and (folder / BEST_ARCH_FILE).is_file():
        narrowed = load_settings(parent / CONFIG_FILE).for_budget(folder.name)
        if narrowed is not None:
            return narrowed
    if folder.name == FINETUNE_DIR and (parent / BEST_ARCH_FILE).is_file() and parent != folder:
        return run_settings_near(parent)  # DIR/finetune of `acp run`, written before it had its own
    return None


def write_proposal(run_dir: Path, widths, space, criterion: RankedCriterion) -> None:
    """``widths``: the clustering proposal, or ``{label: proposal}`` for a multi-budget run."""
    if isinstance(widths, dict):
        widths_document = {label: np.asarray(value).tolist() for label, value in widths.items()}
    else:
        widths_document = np.asarray(widths).tolist()
    atomic_write_json(
        run_dir / PROPOSAL_FILE,
        {
            "widths": widths_document,
            "group_ids": [group.id for group in space.groups],
            "criterion": criterion.name,
            "rankings": {group.id: criterion.ranking(group.id).tolist() for group in space.groups},
        },
    )


def read_proposal(
    run_dir: str | Path, space, budget: str | None = None
) -> tuple[np.ndarray, RankedCriterion]:
    """The proposal widths (of ``budget``, a label, in a multi-budget run) and the frozen channel rankings
    a run was started with."""
    document, path = _proposal_document(run_dir)
    try:
        widths = document["widths"]
        if isinstance(widths, dict) != (budget is not None):
            kind = "a multi-budget" if isinstance(widths, dict) else "a single-budget"
            raise ValueError(f"it is {kind} run's proposal, asked for budget {budget!r}")
        if budget is not None:
            if budget not in widths:
                raise ValueError(f"it has no proposal for budget {budget!r}")
            widths = widths[budget]
        return np.asarray(widths, dtype=np.int64), _rankings(document, space)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: missing or corrupted ({error})") from None


def read_rankings(run_dir: str | Path, space) -> RankedCriterion:
    """The frozen channel rankings a run was started with (every budget of a run shares them)."""
    document, path = _proposal_document(run_dir)
    try:
        return _rankings(document, space)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: missing or corrupted ({error})") from None


def _proposal_document(run_dir: str | Path) -> tuple[dict, Path]:
    path = Path(run_dir) / PROPOSAL_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document, path
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: missing or corrupted ({error})") from None


def _rankings(document: dict, space) -> RankedCriterion:
    rankings = document["rankings"]
    if document["group_ids"] != [group.id for group in space.groups]:
        raise ValueError("its channel groups differ from the model's")
    for group in space.groups:
        if sorted(rankings[group.id]) != list(range(group.full_width)):
            raise ValueError(f"ranking of {group.id} is not a permutation of its channels")
    return RankedCriterion(str(document["criterion"]), rankings)
