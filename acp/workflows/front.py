"""The trade-off front of a search run: ``acp front RUN [--export DIR] [--plot FILE]``.

Every distinct architecture a run evaluated (the best score of each, when the PSO revisited it) is a
point with its costs -- MACs, params, and the predicted latency when the run has a latency table -- and its
proxy score (plus the re-ranked finalist score where the run re-scored it). A point is **Pareto-optimal**
when no other point costs at most as much in every cost and scores at least as well, and is strictly
better in one of them: the architectures worth choosing between. A single-budget run's points all sit at
or under its budget (every candidate was repaired onto it), so its front spans params (and latency) at
nearly one MACs ratio; the history's ``budget`` column, once several budgets share a run, spreads it
over MACs too.

A multi-budget run's front is over every budget's evaluations (each point keeps its budget's label), and
each budget has its own winner (``RUN/<label>/best_arch.json``).

``--export DIR`` writes each Pareto-optimal architecture as a validated architecture file (the run's
frozen channel rankings choose the kept channels, exactly as the search materialized the candidate), so
``acp finetune DIR/front_01_....json`` retrains any point of the front.

Where ``acp run`` has finetuned a winner (``RUN/finetune/metrics.json``, ``RUN/<label>/finetune/`` of a
multi-budget run), :func:`finetuned_points` reads its accuracy (or a detector's mAP@0.5) at its costs and
the base model's; the printout and the plot show them, and :func:`plot_finetuned_curve` draws them alone
(``RUN/curve.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acp.errors import UserError
from acp.workflows import rundir

FRONT_PLOT_FILE = "front.png"
# the finetune's metrics.json keys of the score after finetuning and of the base model's, and what they are
FINETUNED_SCORES = (
    ("val_accuracy_after", "base_val_accuracy", "val accuracy"),
    ("map50_after", "base_map50", "val mAP@0.5"),
)
BUDGET_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


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


COSTS = ("macs", "params", "latency")  # what a front can be over (latency: predicted, under a latency budget)


def front_points(
    rows, finalists=(), *, latency_ms=None, costs: Sequence[str] | None = None
) -> list[FrontPoint]:
    """The distinct architectures of ``rows`` (history rows: widths, macs, params, score, iteration,
    particle, optional budget), each with its best score, ``finalist_score`` from ``finalists`` rows
    (widths, score) and ``latency_ms`` (a sequence aligned with ``rows``, or None), ordered by MACs then
    params; failed evaluations (score None) are left out. Pareto-optimality is over ``costs`` (some of
    :data:`COSTS`; None: MACs, params and latency) against the score: latency counts only when every point
    has one."""
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
    counted = [name for name in (costs or COSTS) if name != "latency" or with_latency]
    matrix = np.array(
        [[best[key][1] if name == "latency" else best[key][0][name] for name in counted] for key in keys],
        dtype=np.float64,
    ).reshape(len(keys), len(counted))
    scores = np.array([float(best[key][0]["score"]) for key in keys])
    optimal = pareto_optimal(matrix, scores)
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
class FinetunedPoint:
    """A winner of a run as ``acp run`` finetuned it (its ``finetune/metrics.json``): the score on the
    validation split after finetuning (accuracy, or mAP@0.5 for a detector) at its costs, with the base
    model's score (None when the file has none)."""

    budget: str | None  # the budget's label in a multi-budget run; None in a single-budget run
    metric: str  # "val accuracy" | "val mAP@0.5"
    score: float
    macs: int
    params: int
    macs_ratio: float
    params_ratio: float
    base_score: float | None
    path: Path  # the metrics.json
    # measured CPU speed-up over the base model per batch size, as the finetune timed it: ((1, 1.10), ...)
    speedups: tuple[tuple[int, float], ...] = ()

    def speedup(self, batch: int) -> float | None:
        return dict(self.speedups).get(batch)

    def score_text(self, score: float | None = None) -> str:
        """``score`` (default: the point's) as the finetune summary words it: 91.20% or mAP 45.20."""
        score = self.score if score is None else score
        return f"{score:.2%}" if self.metric == "val accuracy" else f"{100 * score:.2f}"


@dataclass(frozen=True)
class RunFront:
    run_dir: Path
    points: list[FrontPoint]
    base_macs: int
    base_params: int
    base_ms: float | None
    budget_label: str
    costs: tuple[str, ...] = ("macs", "params")  # what the front is Pareto-optimal over
    labels: tuple[str, ...] = ()  # the budgets of a multi-budget run, in the config's order; () for one
    finetuned: tuple[FinetunedPoint, ...] = ()
    no_winner: Mapping[str, str] = field(default_factory=dict)  # label -> why it has no best_arch.json yet

    @property
    def multiple(self) -> bool:
        return bool(self.labels)

    def point_of(self, widths) -> FrontPoint | None:
        """The point with these widths (e.g. the run's winner), or None when the run never scored them."""
        key = tuple(int(width) for width in widths)
        return next((point for point in self.points if point.widths == key), None)

    @property
    def optimal(self) -> list[FrontPoint]:
        return [point for point in self.points if point.on_front]

    def shown(self, rows: int | None = None) -> list[tuple[int, FrontPoint]]:
        """``(number, point)`` of the front points to print (number: 1-based, as ``export_front`` names the
        files), at most ``rows`` (None or 0: all). A longer front keeps its shape: each budget gets an equal
        share of the rows, spread evenly over its points from the fewest params to the most, and always
        shows its best-scoring point."""
        numbered = list(enumerate(self.optimal, 1))
        if not rows or len(numbered) <= rows:
            return numbered
        by_budget: dict[str, list[tuple[int, FrontPoint]]] = {}
        for item in numbered:
            by_budget.setdefault(item[1].budget, []).append(item)
        share, extra = divmod(rows, len(by_budget))
        chosen: set[int] = set()
        for index, items in enumerate(by_budget.values()):
            quota = max(1, share + (index < extra))
            items = sorted(items, key=lambda item: (item[1].params, item[1].macs))
            best = max(items, key=lambda item: item[1].score)[0]
            spread = np.linspace(0, len(items) - 1, quota).round().astype(int) if quota > 1 else []
            picked = {items[i][0] for i in spread} | {best}
            while len(picked) > quota:  # the best point replaced one of the spread
                picked.discard(min(picked - {best}, key=lambda number: abs(number - best)))
            chosen |= picked
        return [item for item in numbered if item[0] in chosen]

    def table_lines(self, rows: int | None = None) -> list[str]:
        """The Pareto-optimal architectures, one line each (the ``acp front`` printout; at most ``rows``,
        see :meth:`shown`); a multi-budget run's have a ``budget`` column."""
        latency = self.base_ms is not None
        width = max((len(label) for label in self.labels), default=0)
        head = (
            "  #  "
            + (f"{'budget':<{width}}  " if self.multiple else "")
            + "MACs     params   "
            + ("latency   " if latency else "")
            + "proxy score  finalist   iter/part"
        )
        lines = [head]
        for number, point in self.shown(rows):
            budget = f"{point.budget:<{width}}  " if self.multiple else ""
            ms = f"{point.latency_ms / self.base_ms:8.1%}  " if latency and point.latency_ms else ""
            finalist = "-" if point.finalist_score is None else f"{point.finalist_score:.4f}"
            lines.append(
                f"{number:3d}  {budget}{point.macs / self.base_macs:7.1%}  "
                f"{point.params / self.base_params:7.1%}  "
                f"{ms}{point.score:11.4f}  {finalist:>9}  {point.iteration + 1}/{point.particle}"
            )
        return lines

    def winner_lines(self) -> list[str]:
        """Where each budget's winner (``best_arch.json``) sits: its costs, proxy score and whether it is on
        the front; one line per budget (a single-budget run: one, or none before it has a winner)."""
        from acp.core.architecture import Architecture

        lines = []
        for label in self.labels or (None,):
            path = rundir.budget_dir(self.run_dir, label) / rundir.BEST_ARCH_FILE
            shown = path.relative_to(self.run_dir).as_posix()
            if not path.is_file():
                if label is not None:
                    lines.append(f"winner ({shown}): {self.no_winner.get(label, 'none yet')}")
                continue
            winner = self.point_of([group.width for group in Architecture.load(path).groups])
            if winner is None:
                continue
            where = "on the front"
            if not winner.on_front:
                where = "not on the front (chosen by the re-ranking or the measured-latency check)"
            lines.append(
                f"winner ({shown}): MACs {winner.macs / self.base_macs:.1%}, params "
                f"{winner.params / self.base_params:.1%}, proxy score {winner.score:.4f}, {where}"
            )
        return lines

    def finetuned_lines(self) -> list[str]:
        """Each finetuned winner's score at its costs, then the base model's (none before ``acp run``)."""
        lines = [
            f"finetuned ({point.path.relative_to(self.run_dir).as_posix()}): {point.metric} "
            f"{point.score_text()} at MACs {point.macs_ratio:.1%}, params {point.params_ratio:.1%}"
            + _speedup_text(point)
            for point in self.finetuned
        ]
        base = next((point for point in self.finetuned if point.base_score is not None), None)
        if base is not None:
            lines.append(
                f"base model: {base.metric} {base.score_text(base.base_score)} at MACs 100%, params 100%"
            )
        return lines


def _speedup_text(point: FinetunedPoint) -> str:
    if not point.speedups:
        return ""
    return "; measured CPU speed-up " + ", ".join(
        f"{speedup:.2f}x at batch {batch}" for batch, speedup in point.speedups
    )


def _measured_speedups(latency) -> tuple[tuple[int, float], ...]:
    """``((batch, speed-up), ...)`` from a finetune's ``latency_cpu`` ({"batch1": {"speedup": ...}, ...});
    () when it has none or another shape."""
    found = []
    for key, record in (latency or {}).items() if isinstance(latency, dict) else ():
        batch = str(key).removeprefix("batch")
        speedup = record.get("speedup") if isinstance(record, dict) else None
        if batch.isdigit() and isinstance(speedup, int | float) and math.isfinite(speedup) and speedup > 0:
            found.append((int(batch), float(speedup)))
    return tuple(sorted(found))


def finetuned_points(run_dir: str | Path) -> list[FinetunedPoint]:
    """The finetuned winners of the run in ``run_dir``: ``RUN/finetune/metrics.json`` of a single-budget
    run, ``RUN/<label>/finetune/metrics.json`` of each budget of a multi-budget one (in the config's
    order). A budget not finetuned yet, or whose finetuning has not finished (no score after it), is left
    out. UserError naming the file when one is unreadable or lacks a field."""
    import json

    from acp.train.loop import METRICS_NAME
    from acp.workflows.report import budget_labels

    run_dir = Path(run_dir)
    points = []
    for label in budget_labels(run_dir) or (None,):
        path = rundir.budget_dir(run_dir, label) / rundir.FINETUNE_DIR / METRICS_NAME
        if not path.is_file():
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: unreadable ({error})") from None
        found = next(((a, b, what) for a, b, what in FINETUNED_SCORES if a in metrics), None)
        if found is None:
            continue  # still finetuning: the training loop writes metrics.json every epoch
        after, base, metric = found
        try:
            point = FinetunedPoint(
                budget=label,
                metric=metric,
                score=float(metrics[after]),
                macs=int(metrics["macs"]),
                params=int(metrics["params"]),
                macs_ratio=float(metrics["macs_ratio"]),
                params_ratio=float(metrics["params_ratio"]),
                base_score=None if metrics.get(base) is None else float(metrics[base]),
                path=path,
                speedups=_measured_speedups(metrics.get("latency_cpu")),
            )
        except KeyError as error:
            raise UserError(f"{path}: no {error.args[0]!r} field (not a finetune's metrics.json)") from None
        except (TypeError, ValueError) as error:
            raise UserError(f"{path}: a cost or score is not a number ({error})") from None
        points.append(point)
    return points


def read_front(run_dir: str | Path, *, costs: Sequence[str] | None = None) -> RunFront:
    """The front of the search run in ``run_dir`` (UserError naming the missing file when it is not one),
    over every budget's evaluations in a multi-budget run, with the finetuned winners where known.
    ``costs`` (some of :data:`COSTS`; None: every one the run has) are what it is Pareto-optimal over."""
    unknown = sorted(set(costs or ()) - set(COSTS))
    if unknown or (costs is not None and not costs):
        raise UserError(
            f"--costs: expected some of {', '.join(COSTS)}, got {', '.join(unknown) or 'nothing'}"
        )
    from acp.workflows.report import budget_options, read_run, require_run_directory, run_space_and_budgets

    run_dir = Path(run_dir)
    require_run_directory(run_dir)
    options = {}
    if (run_dir / rundir.LATENCY_FILE).is_file():  # predicted latencies need the space and the table
        space, budgets = run_space_and_budgets(run_dir)
        options = {"space": space, **budget_options(budgets)}
    view = read_run(run_dir, **options)
    if view.base_macs is None or view.base_params is None:
        where = "in any budget folder " if view.multiple else "there "
        raise UserError(f"{run_dir}: no {rundir.BEST_ARCH_FILE} {where}yet to read the base costs from")
    latencies = [row.get("latency_ms") for row in view.rows]
    if costs is not None and "latency" in costs and view.base_ms is None:
        raise UserError(
            f"--costs latency: {run_dir} was not searched under a latency budget (no predicted latency)"
        )
    points = front_points(view.rows, view.finalists, latency_ms=latencies, costs=costs)
    if not points:
        raise UserError(f"{run_dir}: no successful evaluation in {rundir.HISTORY_FILE} yet")
    return RunFront(
        run_dir,
        points,
        view.base_macs,
        view.base_params,
        view.base_ms,
        view.budget_label,
        costs=tuple(name for name in (costs or COSTS) if name != "latency" or view.base_ms is not None),
        labels=tuple(part.label for part in view.budgets) if view.multiple else (),
        finetuned=tuple(finetuned_points(run_dir)),
        no_winner={part.label: _why_no_winner(part, view.rows) for part in view.budgets}
        if view.multiple
        else {},
    )


def _why_no_winner(part, rows: Sequence[dict]) -> str:
    """Why a budget has no ``best_arch.json``: not started, still searching, or every evaluation failed."""
    own = [row for row in rows if row.get("budget") == part.label]
    if not own:
        return "none yet (not searched)"
    failed = sum(row["score"] is None for row in own)
    if failed == len(own) and part.state is not None and part.state.get("stopped"):
        return f"none (all {failed} evaluations failed; see report.html for the reasons)"
    return f"none yet ({part.status}: {len(own)} evaluations, {failed} failed)"


def plot_front(front: RunFront, path: str | Path) -> Path:
    """Score against MACs and against params (and predicted latency), the front marked, points coloured by
    budget in a multi-budget run; a last panel of the finetuned winners against MACs (with the base model)
    when ``acp run`` finetuned any. Written atomically."""
    from matplotlib.figure import Figure

    from acp.fileio import atomic_write

    axes_costs = [("MACs", [p.macs / front.base_macs for p in front.points])]
    axes_costs.append(("params", [p.params / front.base_params for p in front.points]))
    if front.base_ms is not None and all(p.latency_ms is not None for p in front.points):
        axes_costs.append(("predicted latency", [p.latency_ms / front.base_ms for p in front.points]))
    panels = len(axes_costs) + bool(front.finetuned)
    figure = Figure(figsize=(4.2 * panels, 3.6), dpi=100)
    axes_row = figure.subplots(1, panels, squeeze=False)[0]
    scores = np.array([p.score for p in front.points])
    optimal = np.array([p.on_front for p in front.points])
    colours = budget_colours(front.labels)
    for number, (axes, (name, costs)) in enumerate(zip(axes_row, axes_costs)):
        costs = np.asarray(costs)
        if number:
            axes.sharey(axes_row[0])
            axes.tick_params(labelleft=False)
        if front.multiple:
            for label, colour in colours.items():
                mine = np.array([p.budget == label for p in front.points])
                axes.scatter(costs[mine & ~optimal], scores[mine & ~optimal], s=10, color=colour, alpha=0.5,
                             label=label)  # fmt: skip
                axes.scatter(costs[mine & optimal], scores[mine & optimal], s=30, color=colour,
                             edgecolors="tab:red", linewidths=1.2)  # fmt: skip
            axes.scatter([], [], s=30, facecolors="none", edgecolors="tab:red", label="Pareto-optimal")
        else:
            axes.scatter(costs[~optimal], scores[~optimal], s=10, color="tab:gray", alpha=0.5,
                         label="evaluated")  # fmt: skip
            axes.scatter(costs[optimal], scores[optimal], s=22, color="tab:red", label="Pareto-optimal")
        axes.set_xlabel(f"{name} (of the base model)")
        _percent_axis(axes.xaxis, costs)
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("proxy score")
    axes_row[0].legend(loc="lower right", fontsize=8)
    if front.finetuned:
        _draw_finetuned(axes_row[-1], front.finetuned, colours)
        axes_row[-1].set_title("finetuned by acp run", fontsize=10)
    figure.suptitle(f"{front.run_dir.name}: {len(front.optimal)} Pareto-optimal of {len(front.points)}")
    figure.tight_layout()
    return atomic_write(Path(path), lambda stream: figure.savefig(stream, format="png"), binary=True)


def plot_finetuned_curve(points, path: str | Path, *, title: str | None = None) -> Path:
    """The finetuned winners (:func:`finetuned_points`) against MACs, joined in MACs order, with the base
    model at 100% (each point's ``base_score``) -- ``acp run``'s ``RUN/curve.png`` -- written atomically to
    ``path``. ValueError when ``points`` is empty."""
    from matplotlib.figure import Figure

    from acp.fileio import atomic_write

    points = list(points)
    if not points:
        raise ValueError("plot_finetuned_curve: no finetuned points")
    batch = _common_batch(points)
    figure = Figure(figsize=(6.0 if batch is None else 11.0, 4.0), dpi=100)
    axes = figure.subplots(1, 1 if batch is None else 2, squeeze=False)[0]
    labels = tuple(point.budget for point in points if point.budget is not None)
    colours = budget_colours(labels)
    _draw_finetuned(axes[0], points, colours)
    axes[0].set_title(title or f"{points[0].metric} after finetuning, against MACs")
    if batch is not None:
        _draw_finetuned(axes[1], points, colours, latency_batch=batch)
        axes[1].set_title(f"against measured CPU latency, batch {batch}")
    figure.tight_layout()
    return atomic_write(Path(path), lambda stream: figure.savefig(stream, format="png"), binary=True)


def budget_colours(labels) -> dict[str, str]:
    """One colour per budget label, in order (the same in every plot of a run)."""
    return {label: BUDGET_COLOURS[number % len(BUDGET_COLOURS)] for number, label in enumerate(labels)}


def _common_batch(points) -> int | None:
    """The batch size every point's latency was measured at (the smallest such), None when there is none."""
    common = set.intersection(*(set(dict(point.speedups)) for point in points)) if points else set()
    return min(common) if common else None


def _draw_finetuned(axes, points, colours: dict[str, str], *, latency_batch: int | None = None) -> None:
    """Finetuned scores against MACs on ``axes`` (against the measured latency at ``latency_batch``, as a
    ratio of the base model's: 1 / speed-up): a line through the points, each labelled with its budget,
    and the base model's point at 100% with a dotted line at its score."""

    def cost(point) -> float:
        return point.macs_ratio if latency_batch is None else 1.0 / point.speedup(latency_batch)

    ordered = sorted(points, key=cost)
    macs = np.array([cost(point) for point in ordered])
    scores = np.array([100 * point.score for point in ordered])
    axes.plot(macs, scores, "-", color="tab:gray", linewidth=1, zorder=1)
    for point, x, y in zip(ordered, macs, scores):
        axes.scatter([x], [y], s=30, color=colours.get(point.budget, "tab:blue"), zorder=2)
        if point.budget is not None:
            axes.annotate(point.budget, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.scatter([], [], s=30, color="tab:gray" if colours else "tab:blue", label="finetuned winner")
    base = next((point.base_score for point in ordered if point.base_score is not None), None)
    if base is not None:
        axes.plot([macs[-1], 1.0], [scores[-1], 100 * base], "--", color="tab:gray", linewidth=0.8, zorder=1)
        axes.scatter([1.0], [100 * base], marker="*", s=120, color="black", zorder=3, label="base model")
        axes.axhline(100 * base, color="black", linestyle=":", linewidth=0.8)
    axes.set_xlabel(
        "MACs (of the base model)" if latency_batch is None else "measured latency (of the base model)"
    )
    unit = "%" if ordered[0].metric == "val accuracy" else "x 100"
    axes.set_ylabel(f"{ordered[0].metric} after finetuning ({unit})")
    _percent_axis(axes.xaxis, np.append(macs, 1.0 if base is not None else macs[-1]))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)


def _percent_axis(axis, values) -> None:
    """Tick labels as percentages, with as many digits as the spread of ``values`` needs."""
    spread = float(np.ptp(values)) if len(values) else 0.0
    digits = 0 if spread >= 0.05 else 1 if spread >= 0.005 else 2
    axis.set_major_formatter(lambda value, _, digits=digits: f"{value:.{digits}%}")


def export_front(front: RunFront, out_dir: str | Path) -> list[Path]:
    """Write each Pareto-optimal architecture to ``out_dir/front_NN_macsM_paramsP.json``; returns the paths.
    The channel space is rebuilt from the run's ``config.toml`` (random weights: the groups do not depend
    on them) and the kept channels come from the run's frozen rankings (``proposal.json``); each file's
    ``budget`` is that of its point's search (one budget of a multi-budget run)."""
    from acp.core.architecture import Architecture
    from acp.fileio import require_fresh_output
    from acp.workflows.problem import load_problem

    run_dir, out_dir = front.run_dir, Path(out_dir)
    require_fresh_output(out_dir, "pick a new directory", flag="--export")
    settings = rundir.read_run_settings(run_dir, flag="acp front")
    problem = load_problem(rundir.structure_only(settings), random_weights=True)
    space = problem.space
    criterion = rundir.read_rankings(run_dir, space)
    preprocessing = _run_preprocessing(run_dir, front.labels)
    documents = []
    for number, point in enumerate(front.optimal, 1):
        narrowed = settings.for_budget(point.budget) if front.multiple else settings
        if narrowed is None:
            raise UserError(f"{run_dir / rundir.CONFIG_FILE}: no budget {point.budget!r} in [budget]")
        keep = {
            group.id: criterion.select(group.id, width) for group, width in zip(space.groups, point.widths)
        }
        architecture = Architecture.from_widths(
            space,
            problem.identity,
            list(point.widths),
            keep,
            budget=narrowed.budget.to_dict(),
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


def _run_preprocessing(run_dir: Path, labels):
    """The preprocessing the run's ``best_arch.json`` records (how its images were prepared; the first
    budget's that has one), or None."""
    from acp.core.architecture import Architecture

    for label in labels or (None,):
        path = rundir.budget_dir(run_dir, label) / rundir.BEST_ARCH_FILE
        if path.is_file():
            return Architecture.load(path).preprocessing
    return None
