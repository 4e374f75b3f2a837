"""``acp run``: search -> finetune in one command, each stage resumable, both stages in one directory.

``DIR/`` is the search run (``best_arch.json``, ``history.sqlite``, checkpoint, ``config.toml``,
``report.png``) and ``DIR/finetune/`` the retrained winner (``arch.json`` + ``weights.pt``, metrics,
curve). ``run_pipeline(resume=DIR)`` continues whichever stage was interrupted: a finished search is not
repeated, an interrupted finetune continues from its last epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from acp.errors import UserError

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"


@dataclass
class PipelineResult:
    run_dir: Path
    search: object  # acp.search.study.SearchResult
    finetune: object  # acp.finetune.FinetuneResult


def finetune_schedule(section: dict, *, epochs: int | None = None):
    """The ``[finetune]`` config section as a training Schedule (``epochs`` overrides)."""
    from acp.train import Schedule

    return Schedule(
        epochs=epochs if epochs is not None else section["epochs"],
        batch_size=section["batch_size"],
        lr=section["lr"],
        weight_decay=section["weight_decay"],
        schedule=section["schedule"],
        label_smoothing=section["label_smoothing"],
        seed=section["seed"],
        distill_temperature=section["temperature"],
        distill_alpha=section["alpha"],
    )


def run_pipeline(
    config=None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    flops: float | None = None,
    params: float | None = None,
    epochs: int | None = None,
    distill: bool | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> PipelineResult:
    """Search ``config`` into ``out``, finetune the winner into ``out/finetune``; or continue ``resume``."""
    from acp.config import load_config
    from acp.finetune import finetune
    from acp.search import search
    from acp.search.run import CONFIG_FILE

    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"--resume {run_dir}: no {CONFIG_FILE} there (not an acp run directory)")
        search_result = search(
            config, resume=run_dir, flops=flops, params=params, workers=workers, progress=progress
        )
    else:
        if out is None or config is None:
            raise UserError("acp run: a CONFIG and --out DIR are required (or --resume DIR)")
        run_dir = Path(out)
        search_result = search(
            config, out=run_dir, flops=flops, params=params, workers=workers, progress=progress
        )
    if search_result.stopped == "interrupted" or search_result.best is None:
        raise UserError(f"{run_dir}: the search found no usable architecture (all evaluations failed)")

    resolved = load_config(run_dir / CONFIG_FILE)
    section = resolved["finetune"]
    schedule = finetune_schedule(section, epochs=epochs)
    finetune_dir = run_dir / FINETUNE_DIR
    tuned = finetune(
        run_dir / "best_arch.json",
        out_dir=finetune_dir,
        schedule=schedule,
        distill=section["distill"] if distill is None else distill,
        resume=(finetune_dir / "checkpoint.pt").is_file(),
        progress=progress,
    )
    return PipelineResult(run_dir, search_result, tuned)
