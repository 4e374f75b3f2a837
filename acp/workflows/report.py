"""``DIR/report.html``: a search run as one page to open in a browser, rewritten while the search runs.

:func:`read_run` gathers what the page shows from the run directory (``history.sqlite``, the checkpoint,
``best_arch.json``, ``config.toml``) and, when the caller has them, from the channel space and the budget
(base costs, predicted latency); :mod:`acp.workflows.report_page` renders it (plots inline, no network
needed to view it); :func:`write_html_report` writes it atomically. :class:`LiveReport` is the search's
``on_iteration`` hook (:class:`acp.search.study.Study`); :func:`regenerate_report` is ``acp report RUN``.

A multi-budget run (``[budget] flops = [0.7, 0.5]``, :mod:`acp.workflows.rundir`) is one page too: each
budget's search is read from its own folder (``DIR/flops0.5/checkpoint.json``; a budget not started yet
has none and is "waiting"), the evaluations from the shared history, and the page shows every budget side
by side (:attr:`RunView.budgets`).
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from acp.errors import UserError, one_line
from acp.search import store
from acp.workflows import rundir

log = logging.getLogger(__name__)

VERSIONED = ("acp", "torch", "torchvision", "torch-pruning", "numpy", "matplotlib")
CHECKPOINTS = (store.CHECKPOINT_FILE, store.PREVIOUS_CHECKPOINT_FILE)
RECENT_ITERATIONS = 5  # the time left is predicted from the mean of this many last iterations


@dataclass
class BudgetView:
    """One budget's search: the run itself in a single-budget run, one ``DIR/<label>/`` folder of a
    multi-budget run."""

    label: str  # "flops0.5" (a single-budget run: its description, as its rows' ``budget``)
    folder: Path
    description: str  # "MACs <= 50.0%"
    budget: dict  # its limits, as Budget.as_dict
    state: dict | None  # its checkpointed study state; None: not started yet
    status: str  # "finished" | "running" | "interrupted" | "not finished" | "waiting" | "unknown"
    winner: dict | None  # {"widths", "score", "macs", "params", "what"}


@dataclass
class RunView:
    """Everything the page shows, read once. ``rows`` are the history's evaluations in order, each with a
    ``budget`` (its own column when the history has one, else the run's budget) and ``latency_ms`` (predicted,
    under a latency budget; else None). ``budgets`` has one entry per budget in the config's order (one for
    a single-budget run); ``multiple`` says whether the run searched several. For a multi-budget run,
    ``state`` and ``budget`` are those of its current budget (the first one not finished) and ``winner`` is
    None: each budget's is in ``budgets``."""

    run_dir: Path
    status: str  # "running" | "finished" | "interrupted" | "unknown" (read back by `acp report`)
    state: dict  # the study's checkpointed state (acp.search.study)
    rows: list[dict]
    finalists: list[dict]
    group_ids: list[str]
    full_widths: list[int]
    base_macs: int | None
    base_params: int | None
    base_ms: float | None
    budget: dict
    budget_label: str
    winner: dict | None  # {"widths", "score", "macs", "params", "what"}
    iteration_limit: int | None
    time_limit: float | None  # the whole run's (a multi-budget run shares it equally between its budgets)
    config_text: str | None
    updated: datetime  # when the state shown was written
    generated: datetime
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    budgets: list[BudgetView] = field(default_factory=list)
    multiple: bool = False

    @property
    def ok_rows(self) -> list[dict]:
        return [row for row in self.rows if row["score"] is not None]

    @property
    def budget_time_limit(self) -> float | None:
        """The time limit of one budget's search."""
        if self.time_limit is None:
            return None
        return self.time_limit / max(1, len(self.budgets)) if self.multiple else self.time_limit


def read_run(
    run_dir: str | Path,
    *,
    status: str | None = None,
    state: dict | None = None,
    space=None,
    budget=None,
    budgets: Mapping | None = None,
    search_settings=None,
    notes: Sequence[str] = (),
) -> RunView:
    """The run in ``run_dir`` as a :class:`RunView`. ``state`` (the study's, as checkpointed; single-budget
    runs) saves reading the checkpoint; ``space`` and ``budget`` (``budgets``: ``{label: Budget}`` of a
    multi-budget run) give the base costs and the predicted latency; without them the base costs come from
    ``best_arch.json`` (any budget's). UserError naming the missing file when ``run_dir`` is not a search
    run directory."""
    run_dir = Path(run_dir)
    require_run_directory(run_dir)
    notes = list(notes)
    history = store.History(run_dir / store.HISTORY_FILE, read_only=True)
    try:
        rows, finalists = history.rows(), history.finalists()
    finally:
        history.close()

    config_path = run_dir / rundir.CONFIG_FILE
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    settings = None
    if config_text is not None:
        try:
            settings = rundir.read_run_settings(run_dir)
        except UserError as error:
            notes.append(f"{rundir.CONFIG_FILE} could not be read: {one_line(error)}")
    if search_settings is None and settings is not None:
        search_settings = settings.search
    labels = list(budgets) if budgets else budget_labels(run_dir, settings, rows)
    if labels is None:
        parts, fingerprint, updated, architecture = _single_budget(run_dir, state, budget, notes)
        budget_objects = {None: budget}
    else:
        parts, fingerprint, updated, architecture = _multi_budget(run_dir, labels, budgets, settings, notes)
        budget_objects = dict(budgets or {})

    if space is not None:
        group_ids = [group.id for group in space.groups]
        full_widths = [int(width) for width in space.full_widths()]
        base_macs, base_params = int(space.base_macs), int(space.base_params)
    elif architecture is not None:
        group_ids = [group.id for group in architecture.groups]
        full_widths = [group.full_width for group in architecture.groups]
        base_macs, base_params = architecture.base_macs, architecture.base_params
    else:
        groups = fingerprint.get("groups") or []
        group_ids, full_widths = [str(g[0]) for g in groups], [int(g[1]) for g in groups]
        base_macs = base_params = None

    if labels is None:
        for row in rows:
            row["budget"] = row.get("budget") or parts[0].label
    base_ms = _add_predicted_latency(rows, parts, budget_objects, architecture)

    current = _current(parts)
    if labels is None:
        run_status = status or ("finished" if parts[0].state.get("stopped") else "unknown")
        parts[0].status = run_status
    else:
        finished = all(part.state is not None and part.state.get("stopped") for part in parts)
        run_status = status or ("finished" if finished else "unknown")
        for part in parts:
            part.status = _budget_status(part, run_status, part is current)
    return RunView(
        run_dir=run_dir,
        status=run_status,
        state=(current.state if current is not None else None) or {},
        rows=rows,
        finalists=finalists,
        group_ids=group_ids,
        full_widths=full_widths,
        base_macs=base_macs,
        base_params=base_params,
        base_ms=base_ms,
        budget=current.budget if current is not None else {},
        budget_label=parts[0].description if labels is None else describe_budgets(parts),
        winner=parts[0].winner if labels is None else None,
        iteration_limit=None if search_settings is None else search_settings.iteration_limit,
        time_limit=None if search_settings is None else search_settings.time_limit_seconds,
        config_text=config_text,
        updated=updated,
        generated=datetime.now(UTC),
        notes=notes,
        versions=versions(),
        budgets=parts,
        multiple=labels is not None,
    )


def _single_budget(run_dir: Path, state, budget, notes):
    """The run as its one :class:`BudgetView`, its checkpoint's fingerprint and time, and its
    ``best_arch.json``."""
    fingerprint: dict = {}
    updated = datetime.now(UTC)
    if state is None:
        checkpoint = store.read_checkpoint(run_dir)
        state, fingerprint = checkpoint["study"], checkpoint.get("fingerprint") or {}
        updated = _checkpoint_time(run_dir) or updated
    architecture = _read_architecture(run_dir, rundir.BEST_ARCH_FILE, notes)
    document = budget.as_dict() if budget is not None else dict(fingerprint.get("budget") or {})
    description = budget.describe() if budget is not None else describe_budget(document)
    part = BudgetView(
        label=description,
        folder=run_dir,
        description=description,
        budget=document,
        state=state,
        status="unknown",  # set by read_run
        winner=_winner(state, architecture),
    )
    return [part], fingerprint, updated, architecture


def _multi_budget(run_dir: Path, labels, budgets, settings, notes):
    """One :class:`BudgetView` per label from its folder, the first checkpoint's fingerprint, the newest
    checkpoint's time, and the first budget's ``best_arch.json`` (for the base costs)."""
    limits = {each.label: each.to_dict() for each in settings.budget.each()} if settings is not None else {}
    parts, fingerprint, times, first_architecture = [], {}, [], None
    for label in labels:
        folder = rundir.budget_dir(run_dir, label)
        state, own = None, {}
        if any((folder / name).is_file() for name in CHECKPOINTS):
            try:
                checkpoint = store.read_checkpoint(folder)
            except UserError as error:
                notes.append(f"{label}: {one_line(error)}")
            else:
                state, own = checkpoint["study"], checkpoint.get("fingerprint") or {}
                fingerprint = fingerprint or own
                times.append(_checkpoint_time(folder))
        architecture = _read_architecture(folder, f"{label}/{rundir.BEST_ARCH_FILE}", notes)
        first_architecture = first_architecture or architecture
        budget = (budgets or {}).get(label)
        if budget is not None:
            document, description = budget.as_dict(), budget.describe()
        else:
            document = limits.get(label) or dict(own.get("budget") or {})
            description = describe_budget(document) if document else label
        parts.append(
            BudgetView(
                label=label,
                folder=folder,
                description=description,
                budget=document,
                state=state,
                status="waiting",  # set by read_run
                winner=None if state is None else _winner(state, architecture),
            )
        )
    updated = max((moment for moment in times if moment is not None), default=datetime.now(UTC))
    return parts, fingerprint, updated, first_architecture


def _add_predicted_latency(rows, parts, budgets: Mapping, architecture) -> float | None:
    """Each row's and each winner's ``latency_ms``, predicted under a latency budget (every budget of a run
    shares its latency table) or, for the winners, as ``best_arch.json`` records it; returns the base
    model's latency (None without one)."""
    predictor = next((b for b in budgets.values() if getattr(b, "max_ms", None) is not None), None)
    base_ms = None
    predicted = [None] * len(rows)
    if predictor is not None and rows:
        base_ms = float(predictor.base_ms)
        widths = np.array([row["widths"] for row in rows], dtype=np.int64)
        predicted = [float(ms) for ms in predictor.predicted_ms(widths)]
    elif architecture is not None and architecture.latency:
        base_ms = architecture.latency.get("base_ms")
    for row, ms in zip(rows, predicted):
        row["latency_ms"] = row.get("latency_ms", ms)
    for winner in (part.winner for part in parts):
        if winner is None or base_ms is None:
            continue
        if predictor is not None:
            winner["latency_ms"] = float(
                predictor.predicted_ms(np.array([winner["widths"]], dtype=np.int64))[0]
            )
        else:
            winner["latency_ms"] = (winner.get("latency") or {}).get("predicted_ms")
    return base_ms


def _current(parts: list[BudgetView]) -> BudgetView | None:
    """The budget being searched: the first started and not finished, else the last started one."""
    started = [part for part in parts if part.state is not None]
    return next((part for part in started if not part.state.get("stopped")), started[-1] if started else None)


def _budget_status(part: BudgetView, run_status: str, is_current: bool) -> str:
    if part.state is None:
        return "waiting"
    if part.state.get("stopped"):
        return "finished"
    if is_current and run_status in ("running", "interrupted"):
        return run_status
    return "not finished"


def _checkpoint_time(folder: Path) -> datetime | None:
    times = [(folder / name).stat().st_mtime for name in CHECKPOINTS if (folder / name).is_file()]
    return datetime.fromtimestamp(max(times), UTC) if times else None


def budget_labels(run_dir: str | Path, settings=None, rows: Sequence[dict] | None = None) -> list[str] | None:
    """The budget labels of a multi-budget run in the config's order (``settings``, else ``config.toml``);
    None for a single-budget run. Without a readable config, the labels the history's rows carry."""
    run_dir = Path(run_dir)
    if settings is None and (run_dir / rundir.CONFIG_FILE).is_file():
        try:
            settings = rundir.read_run_settings(run_dir)
        except UserError:
            settings = None
    if settings is not None:
        return settings.budget.labels() if settings.budget.is_multiple else None
    if any((run_dir / name).is_file() for name in CHECKPOINTS):
        return None
    if rows is None:
        try:
            history = store.History(run_dir / store.HISTORY_FILE, read_only=True)
        except UserError:  # missing or unreadable: whoever reads the rows says so
            return None
        try:
            labels = history.budgets()
        finally:
            history.close()
    else:
        labels = list(dict.fromkeys(row.get("budget") for row in rows))
    labels = [label for label in labels if label]
    return labels or None


def require_run_directory(run_dir: Path) -> None:
    """UserError naming the first file a search run directory must have and ``run_dir`` lacks (a
    multi-budget run has its checkpoints in its budget folders)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory (not an acp search run directory)")
    if not (run_dir / store.HISTORY_FILE).is_file():
        raise UserError(f"{run_dir}: no {store.HISTORY_FILE} there (not an acp search run directory)")
    if any((run_dir / name).is_file() for name in CHECKPOINTS):
        return
    labels = budget_labels(run_dir) or []
    folders = [rundir.budget_dir(run_dir, label) for label in labels]
    if any((folder / name).is_file() for folder in folders for name in CHECKPOINTS):
        return
    where = f" nor in its budget folders ({', '.join(labels)})" if labels else ""
    raise UserError(f"{run_dir}: no {store.CHECKPOINT_FILE} there{where} (not an acp search run directory)")


def write_html_report(run_dir: str | Path, *, out: str | Path | None = None, **options) -> Path:
    """Render the run in ``run_dir`` (options of :func:`read_run`) to ``DIR/report.html`` (or ``out``),
    atomically."""
    from acp.fileio import atomic_write_text
    from acp.workflows.report_page import render

    view = read_run(run_dir, **options)
    return atomic_write_text(Path(run_dir) / rundir.REPORT_HTML_FILE if out is None else out, render(view))


class LiveReport:
    """The search's ``on_iteration(state, status)`` hook: rewrites ``DIR/report.html``.

    Every call while ``"running"`` writes the page unless the last write finished less than
    ``min_interval`` seconds ago (None: 20x the time the last write took, so the page costs the search at
    most ~5% of its time); the final call (``"finished"``/``"interrupted"``) always writes. A failure is
    logged once as a warning and the search goes on. A multi-budget run passes ``budgets``
    (``{label: Budget}``) instead of ``budget`` and calls it with ``state`` None.
    """

    def __init__(
        self, run_dir, *, space=None, budget=None, budgets=None, search_settings=None, min_interval=None
    ):
        self.run_dir = Path(run_dir)
        self.options = {
            "space": space,
            "budget": budget,
            "budgets": budgets,
            "search_settings": search_settings,
        }
        self.min_interval = min_interval
        self.last_seconds = 0.0
        self.last_end = -float("inf")
        self.writes = 0
        self._warned = False

    def __call__(self, state: dict | None, status: str, notes: Sequence[str] = ()) -> None:
        """``state`` None: read it from the checkpoint."""
        now = time.perf_counter()
        interval = 20.0 * self.last_seconds if self.min_interval is None else self.min_interval
        if status == "running" and now - self.last_end < interval:
            return
        try:
            write_html_report(self.run_dir, status=status, state=state, notes=notes, **self.options)
        except Exception as error:  # the page must never cost the user the search
            if not self._warned:
                log.warning("could not write %s: %s", self.run_dir / rundir.REPORT_HTML_FILE, error)
                self._warned = True
            return
        finally:
            self.last_end = time.perf_counter()
            self.last_seconds = self.last_end - now
        self.writes += 1


def regenerate_report(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """``acp report RUN``: rewrite ``RUN/report.html`` (or write ``out``) from the run directory. The channel
    space is built from ``config.toml`` only when the page needs it (predicted latencies, or base costs with
    no ``best_arch.json`` yet)."""
    run_dir = Path(run_dir)
    require_run_directory(run_dir)
    labels = budget_labels(run_dir)
    folders = [run_dir] if labels is None else [rundir.budget_dir(run_dir, label) for label in labels]
    needs_space = (run_dir / rundir.LATENCY_FILE).is_file() or not any(
        (folder / rundir.BEST_ARCH_FILE).is_file() for folder in folders
    )
    options: dict = {}
    notes = []
    if needs_space and (run_dir / rundir.CONFIG_FILE).is_file():
        try:
            space, budgets = run_space_and_budgets(run_dir)
            options = {"space": space, **budget_options(budgets)}
        except (UserError, OSError, ValueError) as error:
            notes.append(
                f"the channel space could not be rebuilt from {rundir.CONFIG_FILE}: {one_line(error)}"
            )
    return write_html_report(run_dir, out=out, notes=notes, **options)


def run_space_and_budgets(run_dir: Path):
    """The run's channel space (rebuilt from ``config.toml`` with random weights) and its Budgets,
    ``{label: Budget}`` (``{None: Budget}`` for a single-budget run, as :func:`rundir.budget_dirs`), with the
    run's own latency table when it has one."""
    import json

    from acp.core.budget import Budget
    from acp.latency.table import LatencyModel
    from acp.workflows.problem import load_problem

    settings = rundir.read_run_settings(run_dir, flag="acp report")
    problem = load_problem(rundir.structure_only(settings), random_weights=True)
    latency = None
    table = run_dir / rundir.LATENCY_FILE
    if table.is_file():
        latency = LatencyModel.from_dict(json.loads(table.read_text(encoding="utf-8")))
    labels = rundir.budget_dirs(run_dir, settings)
    budgets = {
        label: Budget(problem.space, **each.to_dict(), latency_model=latency)
        for label, each in zip(labels, settings.budget.each())
    }
    return problem.space, budgets


def budget_options(budgets: Mapping) -> dict:
    """:func:`read_run`'s options for the Budgets of :func:`run_space_and_budgets`: ``budget`` for a
    single-budget run, ``budgets`` for a multi-budget one."""
    return {"budget": budgets[None]} if None in budgets else {"budgets": dict(budgets)}


def describe_budget(budget: dict) -> str:
    """``{"flops": 0.5, "params": None}`` -> ``"MACs <= 50.0%"`` (as :meth:`Budget.describe` words it)."""
    names = (("flops", "MACs"), ("params", "params"), ("latency", "latency"))
    parts = [f"{name} <= {budget[key]:.1%}" for key, name in names if budget.get(key) is not None]
    if budget.get("latency_ms") is not None:
        parts.append(f"latency <= {budget['latency_ms']:.3g} ms")
    return " and ".join(parts) or "no budget recorded"


def describe_budgets(parts: Sequence[BudgetView]) -> str:
    """A multi-budget run's budgets in one line: ``"3 budgets: MACs <= 70.0%, MACs <= 50.0%, ..."``."""
    return f"{len(parts)} budgets: " + ", ".join(part.description for part in parts)


def versions() -> dict[str, str]:
    """The versions of the packages that wrote the page (read from their metadata, nothing imported)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _read_architecture(folder: Path, shown: str, notes: list[str]):
    """``folder/best_arch.json`` (None when missing, or unreadable: a note naming it as ``shown``)."""
    path = folder / rundir.BEST_ARCH_FILE
    if not path.is_file():
        return None
    from acp.core.architecture import Architecture

    try:
        return Architecture.load(path)
    except UserError as error:
        notes.append(f"{shown} could not be read: {one_line(error)}")
        return None


def _winner(state: dict, architecture) -> dict | None:
    chosen = state.get("chosen") if state.get("finalists") else None
    record = chosen or state.get("best")
    if record is None and architecture is None:
        return None
    what = "re-ranked winner" if chosen else "best proxy score"
    winner = dict(record or {}, what=what)
    if architecture is not None:  # best_arch.json is what the user gets (a latency check may have shrunk it)
        widths = [group.width for group in architecture.groups]
        if record is not None and widths != record.get("widths"):
            winner.update(score=architecture.provenance.get("proxy_score"), what="best_arch.json")
        winner.update(
            widths=widths, macs=architecture.macs, params=architecture.params, latency=architecture.latency
        )
    return winner


def elapsed_per_iteration(state: dict | None) -> list[float]:
    return [float(seconds) for seconds in (state or {}).get("elapsed_per_iteration") or []]


def iteration_durations(state: dict | None) -> np.ndarray:
    """Each iteration's wall time (the checkpoint keeps the cumulative times)."""
    return np.diff([0.0, *elapsed_per_iteration(state)])


def eta_seconds(view: RunView) -> float | None:
    """Search time left: the mean of the last five iterations' times for each iteration left, capped by the
    time limit; None when the run is over or nothing predicts it. A multi-budget run adds its budgets not
    started yet, each at the run's mean time per iteration (capped by its share of the time limit)."""
    if view.status == "finished":
        return None
    if not view.multiple:
        return None if view.state.get("stopped") else _budget_eta(view, view.state, np.array([]))
    observed = np.concatenate([iteration_durations(part.state) for part in view.budgets] + [np.array([])])
    left = [_budget_eta(view, part.state, observed) for part in view.budgets if not _finished(part)]
    if not left or any(seconds is None for seconds in left):
        return None
    return float(sum(left))


def _finished(part: BudgetView) -> bool:
    return part.state is not None and bool(part.state.get("stopped"))


def _budget_eta(view: RunView, state: dict | None, observed: np.ndarray) -> float | None:
    """One budget's search time left (``observed``: iteration times to use when it has none of its own)."""
    state = state or {}
    durations = iteration_durations(state)[-RECENT_ITERATIONS:]
    if not len(durations):
        durations = observed
    left = []
    if view.iteration_limit is not None and len(durations):
        remaining = max(0, view.iteration_limit - int(state.get("iteration", 0)))
        left.append(float(np.mean(durations)) * remaining)
    limit = view.budget_time_limit
    if limit is not None:
        left.append(max(0.0, limit - float(state.get("elapsed", 0.0))))
    return min(left) if left else None
