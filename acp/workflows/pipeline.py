"""``acp run``: search -> finetune in one command, each stage resumable, both stages in one directory.

``DIR/`` is the search run (``best_arch.json``, ``history.sqlite``, checkpoint, ``config.toml``,
``report.png``) and ``DIR/finetune/`` the retrained winner (``arch.json`` + ``weights.pt``, metrics,
curve), trained with the run's ``[finetune]`` settings on the run's split. ``run_pipeline(resume=DIR)``
continues whichever stage was interrupted: a finished search is not repeated, an interrupted finetune
continues from its last epoch.

With several budgets (``--flops 0.7,0.5,0.3``) the search is one multi-budget run and each budget's winner
is finetuned into ``DIR/<label>/finetune/``, in the budgets' order; ``DIR/curve.png`` then plots the
finetuned accuracy of every winner against its MACs (and params), with the unpruned base model's point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from acp.errors import UserError
from acp.workflows import rundir

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run_dir: Path
    search: object  # acp.search.study.SearchResult, or acp.workflows.search.MultiBudgetResult
    finetunes: dict  # {budget label (None for a single budget): acp.train.finetune.FinetuneResult}
    curve: Path | None = None  # DIR/curve.png of a multi-budget run

    @property
    def finetune(self):
        """The finetuned winner of a single-budget run."""
        if list(self.finetunes) != [None]:
            raise ValueError("a multi-budget run has one finetuned winner per budget: use .finetunes")
        return self.finetunes[None]


def run_pipeline(
    config=None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    flops: float | None = None,
    params: float | None = None,
    latency: float | None = None,
    latency_ms: float | None = None,
    iterations: int | None = None,
    time_limit: str | float | None = None,
    patience: int | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    distill: bool | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> PipelineResult:
    """Search ``config`` into ``out``, finetune the winner into ``out/finetune``; or continue ``resume``.

    ``iterations``, ``time_limit``, ``patience`` and ``seed`` are the search's (as in
    :func:`acp.workflows.search.search`); on ``resume`` a larger ``iterations`` or ``time_limit`` extends a
    finished search only while no winner has been finetuned (UserError otherwise: the finetune would be of
    an architecture that is no longer the winner)."""
    from acp.train.loop import CHECKPOINT_NAME
    from acp.workflows.finetune import finetune
    from acp.workflows.search import search

    options = {
        "flops": flops,
        "params": params,
        "latency": latency,
        "latency_ms": latency_ms,
        "iterations": iterations,
        "time_limit": time_limit,
        "patience": patience,
        "seed": seed,
        "workers": workers,
        "progress": progress,
    }
    if resume is not None:
        run_dir = Path(resume)
        settings = rundir.read_run_settings(run_dir)  # a clear error when DIR is not a run
        if iterations is not None or time_limit is not None:
            _refuse_extending_a_finetuned_search(run_dir, settings)
        search_result = search(config, resume=run_dir, **options)
    else:
        if out is None or config is None:
            raise UserError("acp run: a CONFIG and --out DIR are required (or --resume DIR)")
        run_dir = Path(out)
        search_result = search(config, out=run_dir, **options)
    if search_result.stopped == "interrupted":
        raise UserError(f"{run_dir}: the search was interrupted; continue it with acp run --resume {run_dir}")
    results = getattr(search_result, "results", {None: search_result})
    found = [label for label, result in results.items() if result.best is not None]
    if not found:
        which = "" if list(results) == [None] else " under any budget"
        raise UserError(f"{run_dir}: the search{which} found no usable architecture (all evaluations failed)")
    for label in sorted(set(results) - set(found), key=list(results).index):
        log.warning("budget %s: every evaluation failed, so it has no winner to finetune", label)

    tuned = {}
    for label in found:
        folder = rundir.budget_dir(run_dir, label)
        finetune_dir = folder / rundir.FINETUNE_DIR
        if label is not None:
            log.info("finetuning the winner of %s into %s", label, finetune_dir)
        tuned[label] = finetune(
            folder / rundir.BEST_ARCH_FILE,
            out_dir=finetune_dir,
            distill=distill,
            resume=(finetune_dir / CHECKPOINT_NAME).is_file(),
            progress=progress,
            epochs=epochs,
        )
    curve = None
    if list(tuned) != [None]:
        from acp.workflows.front import finetuned_points, plot_finetuned_curve

        curve = plot_finetuned_curve(finetuned_points(run_dir), run_dir / rundir.CURVE_FILE)
    return PipelineResult(run_dir, search_result, tuned, curve)


def _refuse_extending_a_finetuned_search(run_dir: Path, settings) -> None:
    """UserError when a budget's winner is already (being) finetuned: a longer search could change it."""
    for folder in rundir.budget_dirs(run_dir, settings).values():
        finetune_dir = folder / rundir.FINETUNE_DIR
        if finetune_dir.exists():
            raise UserError(
                f"acp run --resume {run_dir}: --iterations/--time-limit would extend a search whose winner "
                f"is already finetuned in {finetune_dir}; extend it with acp search --resume {run_dir} and "
                "finetune the new winner with acp finetune"
            )
