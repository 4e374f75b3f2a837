"""The run directory (contract, DESIGN.md): every file name of a search run, once, and its readers.

``DIR/config.toml`` (the resolved settings), ``DIR/proposal.json`` (the clustering proposal and the channel
rankings), the search's own store (``history.sqlite``, ``checkpoint.json``, ``best_arch.json``,
``report.png``; named in :mod:`acp.search`), ``DIR/report.html`` (the run as a page, rewritten while it
runs: :mod:`acp.workflows.report`), and ``DIR/finetune/`` for ``acp run``'s retrained winner.
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

__all__ = [
    "BEST_ARCH_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "FINETUNE_DIR",
    "HISTORY_FILE",
    "LATENCY_FILE",
    "PREVIOUS_CHECKPOINT_FILE",
    "PROPOSAL_FILE",
    "REPORT_FILE",
    "REPORT_HTML_FILE",
    "RUN_STATE_FILES",
    "read_proposal",
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


def structure_only(settings: RunSettings) -> RunSettings:
    """The run's settings without its weights file: for rebuilding only the channel space (its groups do
    not depend on the weights), so nothing is read and no "weights not read" warning is logged."""
    import dataclasses

    return settings.replace(model=dataclasses.replace(settings.model, weights=None))


def write_run_settings(run_dir: Path, settings: RunSettings) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, settings.to_toml())


def run_settings_near(arch_path: str | Path) -> RunSettings | None:
    """The settings of the run an architecture file belongs to: ``config.toml`` beside it (a search run's
    ``best_arch.json``, or a finetune directory's own) or, for ``DIR/finetune`` of ``acp run``, the run's;
    None otherwise (a ``config.toml`` of some other tool one folder up is never read)."""
    arch_path = Path(arch_path)
    folder = arch_path if arch_path.is_dir() else arch_path.parent
    if (folder / CONFIG_FILE).is_file():
        return load_settings(folder / CONFIG_FILE)
    parent = folder.parent
    if (
        folder.name == FINETUNE_DIR
        and (parent / CONFIG_FILE).is_file()
        and (parent / BEST_ARCH_FILE).is_file()
    ):
        return load_settings(parent / CONFIG_FILE)  # DIR/finetune of `acp run`, written before it had its own
    return None


def write_proposal(run_dir: Path, widths: np.ndarray, space, criterion: RankedCriterion) -> None:
    atomic_write_json(
        run_dir / PROPOSAL_FILE,
        {
            "widths": np.asarray(widths).tolist(),
            "group_ids": [group.id for group in space.groups],
            "criterion": criterion.name,
            "rankings": {group.id: criterion.ranking(group.id).tolist() for group in space.groups},
        },
    )


def read_proposal(run_dir: str | Path, space) -> tuple[np.ndarray, RankedCriterion]:
    """The proposal widths and the frozen channel rankings a run was started with."""
    path = Path(run_dir) / PROPOSAL_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        widths = np.asarray(document["widths"], dtype=np.int64)
        rankings = document["rankings"]
        if document["group_ids"] != [group.id for group in space.groups]:
            raise ValueError("its channel groups differ from the model's")
        for group in space.groups:
            if sorted(rankings[group.id]) != list(range(group.full_width)):
                raise ValueError(f"ranking of {group.id} is not a permutation of its channels")
        return widths, RankedCriterion(str(document["criterion"]), rankings)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: missing or corrupted ({error})") from None
