"""The search as a whole, from a config: ``acp.search.search(...)`` (the API behind ``acp search``).

Setup happens before anything is written, so a user error (bad config, missing weights, infeasible
budget) leaves no half-made run directory: load the problem, check the budget, carve the proxy data from
the training split, collect feature statistics on the calibration images, propose widths by clustering,
rank channels with the criterion, build the proxy evaluator. Then the run directory gets
``config.toml`` (the resolved config, including every ``[search]`` setting) and ``proposal.json`` (the
clustering proposal and the channel rankings), and the :class:`~acp.search.study.Study` runs.

A resumed run reads ``config.toml`` and ``proposal.json`` back instead of recomputing them, so it scores
candidates exactly as the interrupted run did.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from acp.errors import UserError
from acp.search.budget import Budget
from acp.search.settings import EXECUTION_FIELDS, SearchSettings
from acp.search.study import SearchResult, Study

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
PROPOSAL_FILE = "proposal.json"
PROXY_VALIDATION_IMAGES = 2000


class RankedCriterion:
    """Channel rankings frozen into plain data (what ``proposal.json`` stores), criterion-compatible."""

    def __init__(self, name: str, rankings: Mapping[str, list[int]]):
        self.name = name
        self._rankings = {group_id: np.asarray(order, dtype=np.int64) for group_id, order in rankings.items()}

    def ranking(self, group_id: str) -> np.ndarray:
        return self._rankings[group_id]

    def select(self, group_id: str, width: int) -> np.ndarray:
        return np.sort(self._rankings[group_id][:width])


def search(
    config=None,
    *,
    out=None,
    resume=None,
    flops: float | None = None,
    params: float | None = None,
    iterations: int | None = None,
    particles: int | None = None,
    seed: int | None = None,
    patience: int | None = None,
    workers: int | None = None,
    backend: str | None = None,
    dask_scheduler: str | None = None,
    time_limit: str | float | None = None,
    progress: bool = False,
) -> SearchResult:
    """Search ``config`` (a TOML path or a resolved config dict) under a MACs/params budget into ``out``;
    or continue the run in directory ``resume``. Keyword overrides win over the config's values; on
    resume only the execution settings (workers, backend, dask_scheduler, time_limit) may change.

    Returns a :class:`~acp.search.study.SearchResult` (best widths and score, the clustering proposal's
    and the uniform baseline's records, ``architecture`` = the saved ``best_arch.json``).
    """
    from acp.config import load_config

    search_overrides = {"iterations": iterations, "particles": particles, "seed": seed, "patience": patience}
    execution = {
        "workers": workers,
        "backend": backend,
        "dask_scheduler": dask_scheduler,
        "time_limit": time_limit,
    }
    if resume is not None:
        run_dir = Path(resume)
        stored_path = run_dir / CONFIG_FILE
        if not stored_path.is_file():
            raise UserError(f"--resume {run_dir}: no {CONFIG_FILE} there (not an acp search run directory)")
        stored = load_config(stored_path)
        given = stored if config is None else _load(config)
        given = _with_overrides(given, flops, params, search_overrides)
        _check_same_config(stored, given, run_dir)
        resolved = stored
    else:
        if out is None:
            raise UserError("acp search: --out DIR is required (or --resume DIR)")
        if config is None:
            raise UserError("acp search: a CONFIG file is required")
        run_dir = Path(out)
        from acp.fileio import require_fresh_output

        require_fresh_output(run_dir, "pick a new directory or pass --resume")
        resolved = _with_overrides(_load(config), flops, params, search_overrides)
    settings = SearchSettings.from_dict(resolved.get("search"), **execution)
    return _run(resolved, settings, run_dir, resume=resume is not None, progress=progress)


def _load(config) -> dict:
    from acp.config import load_config, validate

    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        source = config.get("_source", "<config>")
        document = {k: v for k, v in config.items() if not str(k).startswith("_")}
        resolved = validate(document, source=str(source))
        resolved["_source"] = source
        return resolved
    raise UserError(f"config: expected a TOML path or a config dict, got {type(config).__name__}")


def _with_overrides(config: dict, flops, params, search_overrides: Mapping) -> dict:
    config = copy.deepcopy(config)
    if flops is not None or params is not None:
        config["budget"] = {"flops": flops, "params": params}  # a budget on the command line replaces both
    section = dict(config.get("search") or {})
    section.update({k: v for k, v in search_overrides.items() if v is not None})
    config["search"] = section
    return config


def _comparable(config: Mapping) -> dict:
    out = {k: copy.deepcopy(v) for k, v in config.items() if not str(k).startswith("_")}
    search = dict(SearchSettings.from_dict(out.get("search")).to_dict())
    out["search"] = {k: v for k, v in search.items() if k not in EXECUTION_FIELDS}
    return out


def _check_same_config(stored: Mapping, given: Mapping, run_dir: Path) -> None:
    old, new = _comparable(stored), _comparable(given)
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                raise UserError(
                    f"--resume {run_dir}: [{section}].{key} differs from the run's {CONFIG_FILE} "
                    f"(run: {a.get(key)!r}, now: {b.get(key)!r}); a run resumes with its own configuration"
                )


def _run(
    config: dict, settings: SearchSettings, run_dir: Path, *, resume: bool, progress: bool
) -> SearchResult:
    from acp.config import dump_toml
    from acp.fileio import atomic_write_json, atomic_write_text
    from acp.problem import load_problem
    from acp.proxy import ProxyEvaluator, default_proxy_data

    problem = load_problem(config, require_weights=True)
    space = problem.space
    budget = Budget(
        space,
        flops=config["budget"]["flops"],
        params=config["budget"]["params"],
        tolerance=settings.tolerance,
    )
    data, splits = problem.data()
    proxy_settings, validation_images = _proxy_settings(config.get("proxy") or {}, len(splits.train))
    proxy_data = default_proxy_data(
        data, splits.train, proxy_settings, validation_images=validation_images, seed=config["data"]["seed"]
    )
    if resume:
        proposal_widths, criterion = _read_proposal(run_dir / PROPOSAL_FILE, space)
    else:
        proposal_widths, criterion = _propose(problem, budget, proxy_data, settings)
    evaluator = ProxyEvaluator(
        problem.model, space, criterion, proxy_data, proxy_settings, identity=problem.identity
    )
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        stored = copy.deepcopy(config)
        stored["budget"] = budget.as_dict()
        stored["search"] = settings.to_dict()
        atomic_write_text(run_dir / CONFIG_FILE, dump_toml(stored))
        atomic_write_json(
            run_dir / PROPOSAL_FILE,
            {
                "widths": proposal_widths.tolist(),
                "group_ids": [group.id for group in space.groups],
                "criterion": criterion.name,
                "rankings": {group.id: criterion.ranking(group.id).tolist() for group in space.groups},
            },
        )
    study = Study(
        space,
        evaluator,
        budget,
        settings,
        run_dir,
        proposal_widths=proposal_widths,
        progress=progress,
        fingerprint={"data": proxy_data.description},
    )
    try:
        return study.run(resume=resume)
    except UserError:
        if not resume:
            _remove_if_nothing_evaluated(run_dir)
        raise


def _remove_if_nothing_evaluated(run_dir: Path) -> None:
    """A fresh run that failed before its first evaluation (e.g. an unreachable Dask scheduler) leaves no
    directory behind, so the same command can simply be run again."""
    import shutil

    from acp.search.store import HISTORY_FILE, History

    evaluated = 0
    if (run_dir / HISTORY_FILE).is_file():
        try:
            history = History(run_dir / HISTORY_FILE)
            evaluated = len(history)
            history.close()
        except UserError:  # an unreadable history is not ours to delete
            return
    if evaluated == 0:
        shutil.rmtree(run_dir, ignore_errors=True)


def _propose(problem, budget: Budget, proxy_data, settings: SearchSettings):
    from acp.cluster import propose_widths
    from acp.criteria import make_criterion
    from acp.features import collect_statistics

    statistics = collect_statistics(
        problem.model, problem.space, proxy_data.calibration_images, labels=proxy_data.calibration_labels
    )
    proposal = propose_widths(statistics, problem.space, flops=budget.flops, params=budget.params)
    log.info(
        "clustering proposal: MACs %.1f%%, params %.1f%% of the base model",
        100 * proposal.macs_ratio,
        100 * proposal.params_ratio,
    )
    criterion = make_criterion(
        settings.criterion, problem.space, model=problem.model, statistics=statistics, seed=settings.seed
    )
    rankings = {group.id: criterion.ranking(group.id).tolist() for group in problem.space.groups}
    return np.asarray(proposal.widths, dtype=np.int64), RankedCriterion(settings.criterion, rankings)


def _read_proposal(path: Path, space):
    import json

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


def _proxy_settings(section: Mapping, train_size: int):
    """ProxySettings from ``[proxy]`` (threads pinned to 1 unless set: scores must not depend on how many
    workers share the cores), shrunk to fit a small training split."""
    from dataclasses import replace

    from acp.proxy import ProxySettings

    values = dict(section)
    wanted_validation = int(values.pop("validation_images", PROXY_VALIDATION_IMAGES))
    if values.get("threads") is None:
        values["threads"] = 1
    settings = ProxySettings.from_dict(values)
    validation = min(wanted_validation, train_size // 2)
    room = train_size - validation
    if settings.calibration_images <= room:
        return settings, validation
    batch_size = min(settings.calibration_batch_size, room)
    fitted = replace(
        settings, calibration_batch_size=batch_size, calibration_batches=max(1, room // batch_size)
    )
    log.info(
        "small training split (%d images): proxy uses %d calibration batches of %d and %d validation images",
        train_size,
        fitted.calibration_batches,
        batch_size,
        validation,
    )
    return fitted, validation
