"""The trade-off front of a search run: ``acp front RUN [--export DIR] [--plot FILE]``.

Every distinct architecture a run evaluated (the best score of each, when the PSO revisited it) is a
point with its costs -- MACs, params, and the predicted latency when the run has a latency table -- and its
proxy score (plus the re-ranked finalist score where the run re-scored it). A point is **Pareto-optimal**
when no other point costs at most as much in every cost and scores at least as well, and is strictly
better in one of them: the architectures worth choosing between. A single-budget run's points all sit at
or under its budget (every candidate was repaired onto it), so its front spans params (and latency) at
nearly one MACs ratio; the history's ``budget`` column, once several budgets share a run, spreads it
over MACs too.

``--export DIR`` writes each Pareto-optimal architecture as a validated architecture file (the run's
frozen channel rankings choose the kept channels, exactly as the search materialized the candidate), so
``acp finetune DIR/front_01_....json`` retrains any point of the front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acp.errors import UserError
from acp.workflows import rundir

FRONT_PLOT_FILE = "front.png"


@dataclass(frozen=True)
class FrontPoint:
    """One distinct architecture of a run: its widths, costs and scores, and whether it is on the front."""

    widths: tuple[int, ...]
    score: float
    macs: int
    params: int
    latency_ms: float | None
    budget: str
    iteration: int
    particle: int
    finalist_score: float | None
    on_front: bool


def front_points(rows, finalists=(), *, latency_ms=None) -> list[FrontPoint]:
    """The distinct architectures of ``rows`` (history rows: widths, macs, params, score, iteration,
    particle, optional budget), each with its best score, ``finalist_score`` from ``finalists`` rows
    (widths, score) and ``latency_ms`` (a sequence aligned with ``rows``, or None), ordered by MACs then
    params; failed evaluations (score None) are left out. Pareto-optimality is over (MACs, params[,
    latency]) against the score: latency counts only when every point has one."""
    best: dict[tuple[int, ...], tuple[dict, float | None]] = {}
    for index, row in enumerate(rows):
        score = row.get("score")
        if score is None or not math.isfinite(float(score)):
            continue
        key = tuple(int(width) for width in row["widths"])
        ms = None if latency_ms is None else latency_ms[index]
        if key not in best or float(score) > float(best[key][0]["score"]):
            best[key] = (row, ms)
    rescored = {
        tuple(int(width) for width in row["widths"]): row.get("score")
        for row in finalists
        if row.get("score") is not None
    }
    keys = sorted(best, key=lambda key: (int(best[key][0]["macs"]), int(best[key][0]["params"]), key))
    with_latency = bool(keys) and all(best[key][1] is not None for key in keys)
    costs = np.array(
        [
            [best[key][0]["macs"], best[key][0]["params"], *([best[key][1]] if with_latency else [])]
            for key in keys
        ],
        dtype=np.float64,
    ).reshape(len(keys), 3 if with_latency else 2)
    scores = np.array([float(best[key][0]["score"]) for key in keys])
    optimal = pareto_optimal(costs, scores)
    return [
        FrontPoint(
            widths=key,
            score=float(best[key][0]["score"]),
            macs=int(best[key][0]["macs"]),
            params=int(best[key][0]["params"]),
            latency_ms=None if best[key][1] is None else float(best[key][1]),
            budget=str(best[key][0].get("budget") or ""),
            iteration=int(best[key][0]["iteration"]),
            particle=int(best[key][0]["particle"]),
            finalist_score=rescored.get(key),
            on_front=bool(optimal[i]),
        )
        for i, key in enumerate(keys)
    ]


def pareto_optimal(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N,) booleans: True where no other point has every cost <= and score >=, one of them strictly."""
    costs, scores = np.asarray(costs, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    optimal = np.zeros(len(scores), dtype=bool)
    # Any dominator comes first in this order (higher score, or the same score at a smaller cost sum), and a
    # dominated point is dominated by some optimal one, so each point is checked against the front so far.
    kept: list[int] = []
    for i in np.lexsort((costs.sum(axis=1), -scores)):
        front = np.asarray(kept, dtype=np.int64)
        no_worse = (costs[front] <= costs[i]).all(axis=1) & (scores[front] >= scores[i])
        better = (costs[front] < costs[i]).any(axis=1) | (scores[front] > scores[i])
        if not (no_worse & better).any():
            optimal[i] = True
            kept.append(int(i))
    return optimal


@dataclass(frozen=True)
class RunFront:
    run_dir: Path
    points: list[FrontPoint]
    base_macs: int
    base_params: int
    base_ms: float | None
    budget_label: str

    def point_of(self, widths) -> FrontPoint | None:
        """The point with these widths (e.g. the run's winner), or None when the run never scored them."""
        key = tuple(int(width) for width in widths)
        return next((point for point in self.points if point.widths == key), None)

    @property
    def optimal(self) -> list[FrontPoint]:
        return [point for point in self.points if point.on_front]

    def table_lines(self) -> list[str]:
        """The Pareto-optimal architectures, one line each (the ``acp front`` printout)."""
        latency = self.base_ms is not None
        head = (
            "  #  MACs     params   "
            + ("latency   " if latency else "")
            + "proxy score  finalist   iter/part"
        )
        lines = [head]
        for number, point in enumerate(self.optimal, 1):
            ms = f"{point.latency_ms / self.base_ms:8.1%}  " if latency and point.latency_ms else ""
            finalist = "-" if point.finalist_score is None else f"{point.finalist_score:.4f}"
            lines.append(
                f"{number:3d}  {point.macs / self.base_macs:7.1%}  {point.params / self.base_params:7.1%}  "
                f"{ms}{point.score:11.4f}  {finalist:>9}  {point.iteration + 1}/{point.particle}"
            )
        return lines


def read_front(run_dir: str | Path) -> RunFront:
    """The front of the search run in ``run_dir`` (UserError naming the missing file when it is not one)."""
    from acp.workflows.report import read_run, require_run_directory, run_space_and_budget

    run_dir = Path(run_dir)
    require_run_directory(run_dir)
    space = budget = None
    if (run_dir / rundir.LATENCY_FILE).is_file():  # predicted latencies need the space and the table
        space, budget = run_space_and_budget(run_dir)
    view = read_run(run_dir, budget=budget, space=space)
    if view.base_macs is None or view.base_params is None:
        raise UserError(f"{run_dir}: no {rundir.BEST_ARCH_FILE} there yet to read the base costs from")
    latencies = [row.get("latency_ms") for row in view.rows]
    points = front_points(view.rows, view.finalists, latency_ms=latencies)
    if not points:
        raise UserError(f"{run_dir}: no successful evaluation in {rundir.HISTORY_FILE} yet")
    return RunFront(run_dir, points, view.base_macs, view.base_params, view.base_ms, view.budget_label)


def plot_front(front: RunFront, path: str | Path) -> Path:
    """Score against MACs and against params (and predicted latency), the front marked; written atomically."""
    from matplotlib.figure import Figure

    from acp.fileio import atomic_write

    axes_costs = [("MACs", [p.macs / front.base_macs for p in front.points])]
    axes_costs.append(("params", [p.params / front.base_params for p in front.points]))
    if front.base_ms is not None and all(p.latency_ms is not None for p in front.points):
        axes_costs.append(("predicted latency", [p.latency_ms / front.base_ms for p in front.points]))
    figure = Figure(figsize=(4.2 * len(axes_costs), 3.6), dpi=100)
    axes_row = figure.subplots(1, len(axes_costs), sharey=True, squeeze=False)[0]
    scores = np.array([p.score for p in front.points])
    optimal = np.array([p.on_front for p in front.points])
    for axes, (name, costs) in zip(axes_row, axes_costs):
        costs = np.asarray(costs)
        axes.scatter(costs[~optimal], scores[~optimal], s=10, color="tab:gray", alpha=0.5, label="evaluated")
        axes.scatter(costs[optimal], scores[optimal], s=22, color="tab:red", label="Pareto-optimal")
        axes.set_xlabel(f"{name} (of the base model)")
        spread = float(np.ptp(costs)) if len(costs) else 0.0
        digits = 0 if spread >= 0.05 else 1 if spread >= 0.005 else 2
        axes.xaxis.set_major_formatter(lambda value, _, digits=digits: f"{value:.{digits}%}")
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("proxy score")
    axes_row[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{front.run_dir.name}: {len(front.optimal)} Pareto-optimal of {len(front.points)}")
    figure.tight_layout()
    return atomic_write(Path(path), lambda stream: figure.savefig(stream, format="png"), binary=True)


def export_front(front: RunFront, out_dir: str | Path) -> list[Path]:
    """Write each Pareto-optimal architecture to ``out_dir/front_NN_macsM_paramsP.json``; returns the paths.
    The channel space is rebuilt from the run's ``config.toml`` (random weights: the groups do not depend
    on them) and the kept channels come from the run's frozen rankings (``proposal.json``)."""
    from acp.core.architecture import Architecture
    from acp.fileio import require_fresh_output
    from acp.workflows.problem import load_problem

    run_dir, out_dir = front.run_dir, Path(out_dir)
    require_fresh_output(out_dir, "pick a new directory for acp front --export")
    settings = rundir.read_run_settings(run_dir, flag="acp front")
    problem = load_problem(rundir.structure_only(settings), random_weights=True)
    space = problem.space
    _, criterion = rundir.read_proposal(run_dir, space)
    preprocessing = _run_preprocessing(run_dir)
    documents = []
    for number, point in enumerate(front.optimal, 1):
        keep = {
            group.id: criterion.select(group.id, width) for group, width in zip(space.groups, point.widths)
        }
        architecture = Architecture.from_widths(
            space,
            problem.identity,
            list(point.widths),
            keep,
            budget=settings.budget.to_dict(),
            space_settings=dict(space.settings),
            provenance={
                "source": "search",
                "seed": settings.search.seed,
                "criterion": criterion.name,
                "proxy_score": point.score,
                "finalist_score": point.finalist_score,
                "created": None,
            },
            preprocessing=preprocessing,
        )
        name = f"front_{number:02d}_macs{architecture.macs_ratio:.1%}_params{architecture.params_ratio:.1%}"
        name = name.replace("%", "")
        documents.append((out_dir / f"{name}.json", architecture))
    out_dir.mkdir(parents=True)
    for path, architecture in documents:
        architecture.save(path)
    return [path for path, _ in documents]


def _run_preprocessing(run_dir: Path):
    """The preprocessing the run's ``best_arch.json`` records (how its images were prepared), or None."""
    from acp.core.architecture import Architecture

    path = run_dir / rundir.BEST_ARCH_FILE
    return Architecture.load(path).preprocessing if path.is_file() else None
