"""Plots and summaries of a search run (``DIR/report.png``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def search_report(
    path: str | os.PathLike, result, rows: list[dict], full_widths, latency_budget=None
) -> Path:
    """``report_figure``'s four panels, written to ``path`` atomically as a PNG."""
    import matplotlib.pyplot as plt

    from acp.fileio import atomic_write

    figure = report_figure(result, rows, full_widths, latency_budget)
    try:
        return atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    finally:
        plt.close(figure)


def report_figure(result, rows: list[dict], full_widths, latency_budget=None):
    """Four panels: the best proxy score so far against evaluations and against wall time, every
    evaluation (score vs MACs ratio, coloured by iteration 1..N, the finalists marked; vs *predicted
    latency* when ``latency_budget``, a :class:`acp.core.budget.Budget` with a latency limit, is given),
    and the chosen architecture's width per group against the full widths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, ((curve, clock), (scatter, bars)) = plt.subplots(2, 2, figsize=(14, 9))
    best = np.array([np.nan if value is None else value for value in result.best_per_iteration], dtype=float)
    per_iteration = result.evaluations / max(1, result.iterations)
    evaluations = per_iteration * np.arange(1, len(best) + 1)
    curve.plot(evaluations, best, marker="o", markersize=3, label="best so far")
    seconds = np.asarray(result.elapsed_per_iteration, dtype=float)
    longest = float(seconds.max()) if len(seconds) else 0.0
    unit, scale = ("s", 1) if longest < 120 else ("min", 60) if longest < 7200 else ("h", 3600)
    if len(seconds) == len(best) and len(best):
        clock.plot(seconds / scale, best, marker="o", markersize=3, label="best so far")
    else:
        clock.text(0.5, 0.5, "no wall times recorded (run made before they were)", ha="center",
                   transform=clock.transAxes)  # fmt: skip
    for axes in (curve, clock):
        for name, record, style in (
            ("clustering proposal", result.proposal, "--"),
            ("uniform ratio", result.uniform, ":"),
        ):
            if record is not None and record.get("score") is not None:
                axes.axhline(record["score"], linestyle=style, color="gray", label=name)
        axes.legend(loc="lower right", fontsize=8)
    curve.set(xlabel="evaluations", ylabel="proxy score", title="best proxy score so far")
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    clock.set(xlabel=f"search wall time ({unit})", ylabel="proxy score", title="best score against time")

    ok = [row for row in rows if row["score"] is not None]
    if latency_budget is not None:
        base_ms = latency_budget.base_ms

        def position(records) -> np.ndarray:
            widths = np.array([record["widths"] for record in records], dtype=np.int64)
            return latency_budget.predicted_ms(widths) / base_ms

        axis_label, limit, limit_label = (
            f"predicted latency / base ({base_ms:.3g} ms)",
            latency_budget.max_ms / base_ms,
            "latency budget",
        )
    else:

        def position(records) -> np.ndarray:
            return np.array([record["macs"] for record in records]) / result.base_macs

        axis_label, limit, limit_label = "MACs / base MACs", result.budget.get("flops"), "MACs budget"
    if ok:
        scores = np.array([row["score"] for row in ok])
        colour = np.array([row["iteration"] + 1 for row in ok])  # 1..N, as progress and resume count them
        points = scatter.scatter(position(ok), scores, c=colour, cmap="viridis", s=12)
        colour_bar = figure.colorbar(points, ax=scatter, label="iteration")
        colour_bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    finalists = [row for row in getattr(result, "finalists", []) if row.get("score") is not None]
    if finalists:
        scatter.scatter(
            position(finalists), [row["score"] for row in finalists],
            facecolors="none", edgecolors="red", s=60, label=f"finalists ({len(finalists)})",
        )  # fmt: skip
        chosen = result.best
        scatter.scatter(
            position([chosen]), [chosen["score"]], marker="*", color="red", s=160, label="chosen (re-ranked)",
        )  # fmt: skip
    if limit is not None:
        scatter.axvline(limit, color="red", linewidth=0.8, label=limit_label)
    if finalists or limit is not None:
        scatter.legend(loc="lower right", fontsize=8)
    failed = len(rows) - len(ok)
    scatter.set(
        xlabel=axis_label, ylabel="proxy score", title=f"all evaluations ({len(rows)}, {failed} failed)"
    )

    full = np.asarray(full_widths)
    positions = np.arange(len(full))
    bars.bar(positions, full, color="lightgray", label="full width")
    if result.best is not None:
        bars.bar(positions, result.best["widths"], color="tab:blue", label="chosen architecture")
    bars.set_xticks(positions, [_short(g) for g in result.group_ids], rotation=90, fontsize=7)
    bars.set(ylabel="channels", title="widths of the chosen architecture")
    bars.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _short(group_id: str, limit: int = 18) -> str:
    return group_id if len(group_id) <= limit else "…" + group_id[-(limit - 1) :]
