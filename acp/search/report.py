"""Plots and summaries of a search run (``DIR/report.png``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def search_report(path: str | os.PathLike, result, rows: list[dict], full_widths) -> Path:
    """Three panels: best score per iteration, every evaluation (score vs MACs ratio), and the best
    architecture's width per group against the full widths. Written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from acp.fileio import atomic_write

    figure, (curve, scatter, bars) = plt.subplots(1, 3, figsize=(16, 4.5))
    best = [np.nan if value is None else value for value in result.best_per_iteration]
    curve.plot(range(len(best)), best, marker="o", label="best so far (PSO)")
    for name, record, style in (
        ("clustering proposal", result.proposal, "--"),
        ("uniform ratio", result.uniform, ":"),
    ):
        if record is not None and record.get("score") is not None:
            curve.axhline(record["score"], linestyle=style, color="gray", label=name)
    curve.set(xlabel="iteration", ylabel="proxy score", title="best proxy score per iteration")
    curve.legend(loc="lower right", fontsize=8)
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))

    ok = [row for row in rows if row["score"] is not None]
    if ok:
        ratios = np.array([row["macs"] for row in ok]) / result.base_macs
        scores = np.array([row["score"] for row in ok])
        colour = np.array([row["iteration"] for row in ok])
        points = scatter.scatter(ratios, scores, c=colour, cmap="viridis", s=12)
        figure.colorbar(points, ax=scatter, label="iteration")
    if result.budget.get("flops") is not None:
        scatter.axvline(result.budget["flops"], color="red", linewidth=0.8, label="MACs budget")
        scatter.legend(loc="lower right", fontsize=8)
    failed = len(rows) - len(ok)
    scatter.set(
        xlabel="MACs / base MACs",
        ylabel="proxy score",
        title=f"all evaluations ({len(rows)}, {failed} failed)",
    )

    full = np.asarray(full_widths)
    positions = np.arange(len(full))
    bars.bar(positions, full, color="lightgray", label="full width")
    if result.best is not None:
        bars.bar(positions, result.best["widths"], color="tab:blue", label="best architecture")
    bars.set_xticks(positions, [_short(g) for g in result.group_ids], rotation=90, fontsize=7)
    bars.set(ylabel="channels", title="widths of the best architecture")
    bars.legend(fontsize=8)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    finally:
        plt.close(figure)


def _short(group_id: str, limit: int = 18) -> str:
    return group_id if len(group_id) <= limit else "…" + group_id[-(limit - 1) :]
