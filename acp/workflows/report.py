"""``DIR/report.html``: a search run as one page to open in a browser, rewritten while the search runs.

:func:`read_run` gathers what the page shows from the run directory (``history.sqlite``, the checkpoint,
``best_arch.json``, ``config.toml``) and, when the caller has them, from the channel space and the budget
(base costs, predicted latency); :mod:`acp.workflows.report_page` renders it (plots inline, no network
needed to view it); :func:`write_html_report` writes it atomically. :class:`LiveReport` is the search's
``on_iteration`` hook (:class:`acp.search.study.Study`); :func:`regenerate_report` is ``acp report RUN``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
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


@dataclass
class RunView:
    """Everything the page shows, read once. ``rows`` are the history's evaluations in order, each with a
    ``budget`` (its own column when the history has one, else the run's budget) and ``latency_ms`` (predicted,
    under a latency budget; else None)."""

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
    time_limit: float | None
    config_text: str | None
    updated: datetime  # when the state shown was written
    generated: datetime
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def ok_rows(self) -> list[dict]:
        return [row for row in self.rows if row["score"] is not None]


def read_run(
    run_dir: str | Path,
    *,
    status: str | None = None,
    state: dict | None = None,
    space=None,
    budget=None,
    search_settings=None,
    notes: Sequence[str] = (),
) -> RunView:
    """The run in ``run_dir`` as a :class:`RunView`. ``state`` (the study's, as checkpointed) saves reading
    the checkpoint; ``space`` and ``budget`` give the base costs and the predicted latency; without them the
    base costs come from ``best_arch.json``. UserError naming the missing file when ``run_dir`` is not a
    search run directory."""
    run_dir = Path(run_dir)
    require_run_directory(run_dir)
    notes = list(notes)
    fingerprint: dict = {}
    updated = datetime.now(UTC)
    if state is None:
        checkpoint = store.read_checkpoint(run_dir)
        state, fingerprint = checkpoint["study"], checkpoint.get("fingerprint") or {}
        newest = max(
            (run_dir / name for name in (store.CHECKPOINT_FILE, store.PREVIOUS_CHECKPOINT_FILE)),
            key=lambda path: path.stat().st_mtime if path.exists() else 0.0,
        )
        updated = datetime.fromtimestamp(newest.stat().st_mtime, UTC)
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        rows, finalists = history.rows(), history.finalists()
    finally:
        history.close()

    config_path = run_dir / rundir.CONFIG_FILE
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    if search_settings is None and config_text is not None:
        try:
            search_settings = rundir.read_run_settings(run_dir).search
        except UserError as error:
            notes.append(f"{rundir.CONFIG_FILE} could not be read: {one_line(error)}")
    architecture = _read_architecture(run_dir, notes)

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
    budget_document = budget.as_dict() if budget is not None else dict(fingerprint.get("budget") or {})
    budget_label = budget.describe() if budget is not None else describe_budget(budget_document)

    base_ms = None
    predicted = [None] * len(rows)
    if budget is not None and getattr(budget, "max_ms", None) is not None and rows:
        base_ms = float(budget.base_ms)
        widths = np.array([row["widths"] for row in rows], dtype=np.int64)
        predicted = [float(ms) for ms in budget.predicted_ms(widths)]
    elif architecture is not None and architecture.latency:
        base_ms = architecture.latency.get("base_ms")
    winner = _winner(state, architecture)
    if winner is not None and base_ms is not None:
        if budget is not None and getattr(budget, "max_ms", None) is not None:
            winner["latency_ms"] = float(budget.predicted_ms(np.array([winner["widths"]], dtype=np.int64))[0])
        else:
            winner["latency_ms"] = (winner.get("latency") or {}).get("predicted_ms")
    for row, ms in zip(rows, predicted):
        row["latency_ms"] = row.get("latency_ms", ms)
        row["budget"] = row.get("budget") or budget_label

    return RunView(
        run_dir=run_dir,
        status=status or ("finished" if state.get("stopped") else "unknown"),
        state=state,
        rows=rows,
        finalists=finalists,
        group_ids=group_ids,
        full_widths=full_widths,
        base_macs=base_macs,
        base_params=base_params,
        base_ms=base_ms,
        budget=budget_document,
        budget_label=budget_label,
        winner=winner,
        iteration_limit=None if search_settings is None else search_settings.iteration_limit,
        time_limit=None if search_settings is None else search_settings.time_limit_seconds,
        config_text=config_text,
        updated=updated,
        generated=datetime.now(UTC),
        notes=notes,
        versions=versions(),
    )


def require_run_directory(run_dir: Path) -> None:
    """UserError naming the first file a search run directory must have and ``run_dir`` lacks."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory (not an acp search run directory)")
    if not (run_dir / store.HISTORY_FILE).is_file():
        raise UserError(f"{run_dir}: no {store.HISTORY_FILE} there (not an acp search run directory)")
    checkpoints = (store.CHECKPOINT_FILE, store.PREVIOUS_CHECKPOINT_FILE)
    if not any((run_dir / name).is_file() for name in checkpoints):
        raise UserError(f"{run_dir}: no {store.CHECKPOINT_FILE} there (not an acp search run directory)")


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
    logged once as a warning and the search goes on.
    """

    def __init__(self, run_dir, *, space=None, budget=None, search_settings=None, min_interval=None):
        self.run_dir = Path(run_dir)
        self.options = {"space": space, "budget": budget, "search_settings": search_settings}
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
    space = budget = None
    needs_space = (run_dir / rundir.LATENCY_FILE).is_file() or not (run_dir / rundir.BEST_ARCH_FILE).is_file()
    notes = []
    if needs_space and (run_dir / rundir.CONFIG_FILE).is_file():
        try:
            space, budget = run_space_and_budget(run_dir)
        except (UserError, OSError, ValueError) as error:
            notes.append(
                f"the channel space could not be rebuilt from {rundir.CONFIG_FILE}: {one_line(error)}"
            )
    return write_html_report(run_dir, out=out, space=space, budget=budget, notes=notes)


def run_space_and_budget(run_dir: Path):
    """The run's channel space (rebuilt from ``config.toml`` with random weights) and its Budget, with the
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
    return problem.space, Budget(problem.space, **settings.budget.to_dict(), latency_model=latency)


def describe_budget(budget: dict) -> str:
    """``{"flops": 0.5, "params": None}`` -> ``"MACs <= 50.0%"`` (as :meth:`Budget.describe` words it)."""
    names = (("flops", "MACs"), ("params", "params"), ("latency", "latency"))
    parts = [f"{name} <= {budget[key]:.1%}" for key, name in names if budget.get(key) is not None]
    if budget.get("latency_ms") is not None:
        parts.append(f"latency <= {budget['latency_ms']:.3g} ms")
    return " and ".join(parts) or "no budget recorded"


def versions() -> dict[str, str]:
    """The versions of the packages that wrote the page (read from their metadata, nothing imported)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _read_architecture(run_dir: Path, notes: list[str]):
    path = run_dir / rundir.BEST_ARCH_FILE
    if not path.is_file():
        return None
    from acp.core.architecture import Architecture

    try:
        return Architecture.load(path)
    except UserError as error:
        notes.append(f"{rundir.BEST_ARCH_FILE} could not be read: {one_line(error)}")
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


def elapsed_per_iteration(state: dict) -> list[float]:
    return [float(seconds) for seconds in state.get("elapsed_per_iteration") or []]


def eta_seconds(view: RunView) -> float | None:
    """Search time left: the mean of the last five iterations' times for each iteration left, capped by the
    time limit; None when the run is over or nothing predicts it."""
    if view.status == "finished" or view.state.get("stopped"):
        return None
    elapsed = elapsed_per_iteration(view.state)
    left = []
    if view.iteration_limit is not None and elapsed:
        durations = np.diff([0.0, *elapsed])[-5:]
        remaining = max(0, view.iteration_limit - int(view.state.get("iteration", 0)))
        left.append(float(np.mean(durations)) * remaining)
    if view.time_limit is not None:
        left.append(max(0.0, view.time_limit - float(view.state.get("elapsed", 0.0))))
    return min(left) if left else None
