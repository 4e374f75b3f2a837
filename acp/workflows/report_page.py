"""The page of :mod:`acp.workflows.report`: a :class:`~acp.workflows.report.RunView` as self-contained HTML.

Plots are matplotlib figures embedded as SVG data URIs, the style and the table sorting are inline, and a
Content-Security-Policy forbids any request: the page needs no network and no other file. Every text that
comes from the run (config values, group ids, failure reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape

import numpy as np

TOP = 30  # candidates in the sortable table
FAILED_SHOWN = 100
WIDTH_INCHES = 9.0  # 900 px at 100 dpi, the page's width
STATUS_CLASSES = {"running": "running", "finished": "finished", "waiting": "waiting"}
STOP_REASONS = {
    "iterations": "reached its iteration limit",
    "patience": "stopped early: no improvement for `patience` iterations",
    "time_limit": "reached its time limit",
}


def render(view) -> str:
    """The whole page as one string."""
    sections = [
        _status(view),
        _best_per_budget(view),
        _progress_plot(view),
        _plane_plot(view),
        _widths_plot(view),
        _top_table(view),
        _failed(view),
        _config(view),
        _versions(view),
    ]
    refresh = '<meta http-equiv="refresh" content="120">' if view.status == "running" else ""
    title = f"acp search report: {view.run_dir.name}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"{refresh}<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>\n"
        f"<h1>{escape(title)}</h1>\n"
        f'<p class="where">{escape(str(view.run_dir))}</p>\n'
        + "\n".join(section for section in sections if section)
        + f"\n<footer>written by acp {escape(view.versions.get('acp', '?'))} at {_clock(view.generated)}; "
        f"<code>acp report {escape(str(view.run_dir))}</code> writes it again.</footer>\n"
        f"</main><script>{SCRIPT}</script></body></html>\n"
    )


# --- sections -------------------------------------------------------------------------------------------


def _status(view) -> str:
    from acp.workflows.report import elapsed_per_iteration, eta_seconds

    if view.multiple:
        return _run_status(view)
    state = view.state
    stopped = state.get("stopped")
    resume = f"resume with <code>acp search --resume {escape(str(view.run_dir))}</code>"
    if view.status == "running":
        status = '<span class="running">running</span>: this page is rewritten as the search goes on'
    elif view.status == "interrupted":
        status = f'<span class="stopped">interrupted</span>: {resume}'
    elif stopped:
        status = f'<span class="finished">finished</span>: {escape(STOP_REASONS.get(stopped, stopped))}'
    else:
        status = f'<span class="stopped">not finished</span>: still running elsewhere, or stopped; {resume}'
    iteration = int(state.get("iteration", 0))
    limit = view.iteration_limit
    if limit is not None and limit >= iteration:
        of = f"{iteration} of {limit}"
    elif view.time_limit is not None and limit is None:
        of = f"{iteration} (until the time limit of {_duration(view.time_limit)})"
    else:
        of = str(iteration)
    evaluations = len(view.rows)
    failed = evaluations - len(view.ok_rows)
    items = [
        ("status", status),
        ("iteration", escape(of)),
        ("evaluations", f"{evaluations} ({failed} failed)"),
        ("search time", escape(_duration(float(state.get("elapsed", 0.0))))),
    ]
    eta = eta_seconds(view)
    if eta is not None:
        elapsed = elapsed_per_iteration(state)
        basis = f"the mean of the last {min(5, len(elapsed))} iterations" if elapsed else "the time limit"
        items.append(("time left", escape(f"about {_duration(eta)} (from {basis}; re-ranking not included)")))
    items.append(("budget", escape(view.budget_label)))
    winner = view.winner
    if winner is not None and winner.get("widths") is not None:
        items.append((winner["what"], escape(_candidate_line(view, winner))))
        measured = (winner.get("latency") or {}).get("measured_ms")
        if measured is not None:
            items.append(("measured latency", escape(_measured_latency(winner["latency"]))))
    finalists = state.get("finalists") or []
    if finalists and state.get("chosen"):
        chosen = state["chosen"]
        rank = 1 + next((i for i, row in enumerate(finalists) if row["widths"] == chosen["widths"]), 0)
        score = chosen.get("finalist_score")
        text = f"{len(finalists)} finalists re-scored; the winner was #{rank} by proxy score"
        items.append(
            ("re-ranking", escape(text + ("" if score is None else f" (finalist score {score:.4f})")))
        )
    for name in ("proposal", "uniform"):
        record = state.get(name)
        if record and record.get("score") is not None:
            label = "clustering proposal" if name == "proposal" else "uniform ratio"
            items.append((label, escape(_candidate_line(view, record))))
    items.append(("last update", _clock(view.updated)))
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in items)
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in view.notes)
    return f'<section id="status"><h2>Status</h2><table class="facts">{rows}</table>{notes}</section>'


def _run_status(view) -> str:
    """The status of a multi-budget run as a whole (each budget's is in :func:`_budgets`)."""
    from acp.workflows.report import RECENT_ITERATIONS, eta_seconds

    resume = f"resume with <code>acp search --resume {escape(str(view.run_dir))}</code>"
    if view.status == "running":
        status = '<span class="running">running</span>: this page is rewritten as the search goes on'
    elif view.status == "interrupted":
        status = f'<span class="stopped">interrupted</span>: {resume}'
    elif view.status == "finished":
        status = '<span class="finished">finished</span>: every budget was searched'
    else:
        status = f'<span class="stopped">not finished</span>: still running elsewhere, or stopped; {resume}'
    counts: dict[str, int] = {}
    for part in view.budgets:
        counts[part.status] = counts.get(part.status, 0) + 1
    evaluations = len(view.rows)
    failed = evaluations - len(view.ok_rows)
    seconds = sum(float((part.state or {}).get("elapsed", 0.0)) for part in view.budgets)
    items = [
        ("status", status),
        ("budgets", escape(f"{len(view.budgets)}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))),
        ("evaluations", f"{evaluations} ({failed} failed)"),
        ("search time", escape(_duration(seconds))),
    ]
    eta = eta_seconds(view)
    if eta is not None:
        basis = (
            f"the mean of the last {RECENT_ITERATIONS} iterations' times, and the run's mean time per "
            "iteration for the budgets not started; re-ranking not included"
        )
        items.append(("time left", escape(f"about {_duration(eta)} (from {basis})")))
    items.append(("last update", _clock(view.updated)))
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in items)
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in view.notes)
    return f'<section id="status"><h2>Status</h2><table class="facts">{rows}</table>{notes}</section>'


def _budgets(view) -> str:
    """A multi-budget run's budgets, one row each: status, progress, best so far and winner."""
    groups = _by_budget(view.rows)
    lines = []
    for part in view.budgets:
        state = part.state or {}
        rows = groups.get(part.label, [])
        ok = [(number, row) for number, row in enumerate(rows, start=1) if row["score"] is not None]
        status = f'<span class="{STATUS_CLASSES.get(part.status, "stopped")}">{escape(part.status)}</span>'
        if part.status == "finished":
            status += escape(f": {STOP_REASONS.get(state['stopped'], state['stopped'])}")
        iteration = int(state.get("iteration", 0))
        limit = view.iteration_limit
        progress = f"{iteration} of {limit}" if limit is not None and limit >= iteration else str(iteration)
        cells = [
            escape(part.label),
            escape(part.description),
            status,
            "-" if part.state is None else escape(progress),
            f"{len(rows)} ({len(rows) - len(ok)} failed)",
        ]
        if ok:
            number, best = max(ok, key=lambda item: (item[1]["score"], -item[0]))
            cells += [
                f"{best['score']:.4f}",
                _percent(best["macs"], view.base_macs),
                _percent(best["params"], view.base_params),
            ]
        else:
            cells += ["-", "-", "-"]
        winner = part.winner
        if winner is not None and winner.get("widths") is not None:
            score = "" if winner.get("score") is None else f"score {winner['score']:.4f}, "
            measured = winner.get("latency") or {}
            cells.append(
                escape(
                    f"{winner['what']}: {score}MACs {_percent(winner.get('macs'), view.base_macs)}, "
                    f"params {_percent(winner.get('params'), view.base_params)}"
                    + (
                        ""
                        if measured.get("measured_ms") is None
                        else f", measured latency {_measured_latency(measured)}"
                    )
                )
            )
        else:
            cells.append("-")
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    names = ("budget", "limit", "status", "iteration", "evaluations", "best proxy score", "MACs", "params")
    head = "".join(f"<th>{name}</th>" for name in (*names, "winner"))
    table = f'<div class="scroll"><table id="budgets-table"><tr>{head}</tr>{"".join(lines)}</table></div>'
    caption = (
        "Each budget is searched in turn, into its own folder (RUN/<budget>/best_arch.json); "
        "the winner is the re-ranked one when the run re-scores finalists."
    )
    return _section("best", "Budgets", table, caption)


def _best_per_budget(view) -> str:
    if view.multiple:
        return _budgets(view)
    groups = _by_budget(view.rows)
    if not groups:
        return ""
    lines = []
    for budget, rows in groups.items():
        ok = [(number, row) for number, row in enumerate(rows, start=1) if row["score"] is not None]
        if not ok:
            lines.append(f"<tr><td>{escape(budget)}</td><td colspan=5>no successful evaluation yet</td></tr>")
            continue
        number, best = max(ok, key=lambda item: (item[1]["score"], -item[0]))
        lines.append(
            f"<tr><td>{escape(budget)}</td><td>{best['score']:.4f}</td>"
            f"<td>{_percent(best['macs'], view.base_macs)}</td>"
            f"<td>{_percent(best['params'], view.base_params)}</td><td>{number}</td>"
            f"<td>{best['iteration'] + 1}</td></tr>"
        )
    names = ("budget", "best proxy score", "MACs", "params", "at evaluation", "iteration")
    head = "".join(f"<th>{name}</th>" for name in names)
    return _section("best", "Best so far per budget", f"<table><tr>{head}</tr>{''.join(lines)}</table>")


def _progress_plot(view) -> str:
    from acp.workflows.report import elapsed_per_iteration

    if not view.ok_rows:
        return '<section id="progress"><h2>Progress</h2><p>No successful evaluation yet.</p></section>'
    figure = _figure(2, height=3.3, right=1.1 if view.multiple else 0.2)  # (room for the budgets' legend)
    by_evaluation, by_time = figure.axes
    single = np.array(elapsed_per_iteration(view.state))
    timelines = _timelines(view) if view.multiple else {}  # {budget: its iterations' end times}
    longest = max((float(times.max()) for times in (single, *timelines.values()) if len(times)), default=0.0)
    unit, scale = _time_unit(longest)
    groups = _by_budget(view.rows)
    colours = _colours(view) if view.multiple else {}
    for budget, rows in groups.items():
        elapsed = timelines.get(budget, np.array([])) if view.multiple else single
        scores = np.array([-np.inf if row["score"] is None else row["score"] for row in rows])
        best = np.maximum.accumulate(scores)
        shown = np.isfinite(best)
        numbers = np.arange(1, len(rows) + 1)
        label = budget if len(groups) > 1 else "best so far"
        style = {"color": colours[budget]} if budget in colours else {}
        by_evaluation.step(numbers[shown], best[shown], where="post", label=_tex_safe(label), **style)
        iterations = np.array([row["iteration"] for row in rows])
        timed = shown & (iterations < len(elapsed))
        if timed.any():
            seconds = elapsed[iterations[timed]] / scale
            by_time.step(seconds, best[timed], where="post", label=_tex_safe(label), **style)
    if not any(len(times) for times in (single, *timelines.values())):
        by_time.text(0.5, 0.5, "no wall times recorded", ha="center", transform=by_time.transAxes)
    for axes in (by_evaluation, by_time):
        for name, style in (("proposal", "--"), ("uniform", ":")):
            record = None if view.multiple else view.state.get(name)  # one per budget: too many lines
            if record and record.get("score") is not None:
                label = "clustering proposal" if name == "proposal" else "uniform ratio"
                axes.axhline(record["score"], linestyle=style, color="gray", linewidth=1, label=label)
        axes.set_ylabel("proxy score")
        axes.grid(alpha=0.3)
        if not view.multiple:
            axes.legend(loc="lower right", fontsize=8)
    if view.multiple:  # one legend for both, beside them: inside, it hid a budget's line
        by_time.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
    time_label = "search time of the run, budget after budget" if view.multiple else "search time"
    by_evaluation.set(
        xlabel="evaluations" + (" of each budget" if view.multiple else ""),
        title="best proxy score against evaluations",
    )
    by_time.set(xlabel=f"{time_label} ({unit})", title="best proxy score against wall time")
    return _section("progress", "Progress", _image(figure, "best proxy score so far"))


def _timelines(view) -> dict[str, np.ndarray]:
    """Each budget's iteration end times in a multi-budget run's search time (its budgets follow each
    other)."""
    from acp.workflows.report import elapsed_per_iteration

    timelines, offset = {}, 0.0
    for part in view.budgets:
        elapsed = np.array(elapsed_per_iteration(part.state))
        timelines[part.label] = offset + elapsed
        offset += float((part.state or {}).get("elapsed", elapsed[-1] if len(elapsed) else 0.0))
    return timelines


def _plane_plot(view) -> str:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    ok = view.ok_rows
    if not ok:
        return ""
    panels = [("macs", view.base_macs, "MACs"), ("params", view.base_params, "params")]
    if view.base_ms and any(row.get("latency_ms") is not None for row in ok):
        panels.append(("latency_ms", view.base_ms, "predicted latency"))
    by_budget = view.multiple
    figure = _figure(len(panels), height=3.6, sharey=True, right=0.2 if by_budget else 1.0)
    scores = np.array([row["score"] for row in ok])
    if by_budget:
        colours = _colours(view)
        colour = [colours.get(row["budget"], "tab:gray") for row in ok]
    else:
        colour = np.array([row["iteration"] + 1 for row in ok])  # 1..N, as the progress bar counts them
    winners = [part for part in view.budgets if part.winner is not None]
    finalists = {
        tuple(row["widths"]) for part in view.budgets for row in (part.state or {}).get("finalists") or []
    }
    points = None
    for axes, (key, base, name) in zip(figure.axes, panels):
        costs = np.array([np.nan if row.get(key) is None else row[key] for row in ok], dtype=float)
        costs = costs / base if base else costs
        if by_budget:
            for label in colours:
                mine = np.array([row["budget"] == label for row in ok])
                axes.scatter(costs[mine], scores[mine], color=colours[label], s=10, linewidths=0,
                             label=_tex_safe(label))  # fmt: skip
        else:
            points = axes.scatter(costs, scores, c=colour, cmap="viridis", s=10, linewidths=0)
        front = pareto_front(costs, scores)
        axes.plot(
            costs[front], scores[front], "-o", color="tab:red", markersize=3, linewidth=1, label="front"
        )
        if finalists:
            marked = np.array([tuple(row["widths"]) in finalists for row in ok])
            axes.scatter(costs[marked], scores[marked], facecolors="none", edgecolors="tab:red", s=50,
                         label=f"finalists ({len(finalists)})")  # fmt: skip
        for number, part in enumerate(winners):
            winner = part.winner
            if winner.get(key) is None or winner.get("score") is None:
                continue
            where = winner[key] / base if base else winner[key]
            style = (
                {"color": colours[part.label], "edgecolors": "black"} if by_budget else {"color": "tab:red"}
            )
            label = "winners" if by_budget else winner["what"]
            axes.scatter([where], [winner["score"]], marker="*", s=150, zorder=3,
                         label=label if number == 0 else None, **style)  # fmt: skip
        limit_label = "budgets" if by_budget else "budget"
        for number, part in enumerate(view.budgets):
            limit = _limit(part.budget, key, view.base_ms)
            if limit is not None:
                colour_of = colours[part.label] if by_budget else "tab:red"
                axes.axvline(limit, color=colour_of, linewidth=0.8, linestyle="--",
                             label=limit_label if number == 0 else None)  # fmt: skip
        axes.set_xlabel(f"{name} (of the base model)" if base else name)
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5))
        if base:
            axes.xaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(alpha=0.3)
    figure.axes[0].set_ylabel("proxy score")
    figure.axes[0].legend(loc="lower right", fontsize=7)
    if points is not None:
        bar_axes = figure.add_axes((1 - 0.85 / WIDTH_INCHES, 0.55 / 3.6, 0.12 / WIDTH_INCHES, 1 - 0.9 / 3.6))
        figure.colorbar(points, cax=bar_axes, label="iteration")
    failed = len(view.rows) - len(ok)
    coloured = "coloured by budget (a dashed line each: its limit)" if by_budget else "coloured by iteration"
    caption = (
        f"All {len(view.rows)} evaluations ({failed} failed, not shown), {coloured}; the red line "
        "is the Pareto front (no other candidate is both cheaper and better)."
    )
    return _section(
        "plane", "Cost against score", _image(figure, "evaluations on the cost/score plane"), caption
    )


def _limit(budget: dict, key: str, base_ms: float | None) -> float | None:
    """A budget's limit on one cost, as a ratio of the base model's (``key``: macs, params, latency_ms)."""
    if key == "macs":
        return budget.get("flops")
    if key == "params":
        return budget.get("params")
    limits = [budget.get("latency")]
    if budget.get("latency_ms") is not None and base_ms:
        limits.append(budget["latency_ms"] / base_ms)
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _widths_plot(view) -> str:
    count = len(view.full_widths)
    winners = [
        part
        for part in view.budgets
        if part.winner is not None and part.winner.get("widths") and len(part.winner["widths"]) == count
    ]
    if not winners:
        return ""
    longest = max((len(_short(group_id)) for group_id in view.group_ids), default=4)
    figure = _figure(1, height=2.5 + 0.06 * longest, bottom=0.25 + 0.06 * longest)
    (axes,) = figure.axes
    positions = np.arange(count)
    axes.bar(positions, view.full_widths, color="lightgray", label="full width")
    if view.multiple:
        colours = _colours(view)
        width = 0.8 / len(winners)
        for number, part in enumerate(winners):
            shift = (number - (len(winners) - 1) / 2) * width
            axes.bar(positions + shift, part.winner["widths"], width=width, color=colours[part.label],
                     label=_tex_safe(part.label))  # fmt: skip
    else:
        axes.bar(positions, winners[0].winner["widths"], color="tab:blue", label=winners[0].winner["what"])
    labels = [_tex_safe(_short(group_id)) for group_id in view.group_ids] or [""] * count
    axes.set_xticks(positions, labels, rotation=90, fontsize=7 if count <= 40 else 5)
    axes.set(ylabel="channels", xlim=(-0.6, count - 0.4))
    axes.legend(fontsize=8)
    total = max(1, sum(view.full_widths))
    if view.multiple:
        kept = ", ".join(f"{part.label} {sum(part.winner['widths']) / total:.1%}" for part in winners)
        caption = f"{count} channel groups; of all channels, the winners keep: {kept}."
        title = "Widths of the winners per group"
    else:
        caption = (
            f"{count} channel groups; {sum(winners[0].winner['widths']) / total:.1%} of all channels kept."
        )
        title = "Widths of the winner per group"
    return _section("widths", title, _image(figure, "winner widths"), caption)


def _top_table(view) -> str:
    first: dict[tuple, tuple[int, dict]] = {}
    for number, row in enumerate(view.rows, start=1):
        key = tuple(row["widths"])
        if row["score"] is not None and key not in first:
            first[key] = (number, row)
    if not first:
        return ""
    ranked = sorted(first.values(), key=lambda item: (-item[1]["score"], item[0]))[:TOP]
    finalist_scores = {tuple(row["widths"]): row["score"] for row in view.finalists}
    latency = any(row.get("latency_ms") is not None for _, row in ranked)
    from acp.workflows.front import front_points

    latencies = [row.get("latency_ms") for row in view.rows]
    front = {p.widths for p in front_points(view.rows, latency_ms=latencies) if p.on_front}
    columns = [("#", "asc"), *([("budget", "asc")] if view.multiple else [])]
    columns += [("score", "desc"), ("accuracy", "desc"), ("MACs %", "asc"), ("params %", "asc")]
    order = {part.label: number for number, part in enumerate(view.budgets)}
    if latency:
        columns.append(("latency ms", "asc"))
    columns += [("iteration", "asc"), ("particle", "asc"), ("evaluation", "asc")]
    if finalist_scores:
        columns.append(("finalist score", "desc"))
    columns.append(("front", "desc"))
    head = "".join(
        f'<th data-first="{order}"{" aria-sort=ascending" if name == "#" else ""}>{escape(name)}</th>'
        for name, order in columns
    )
    body = []
    for rank, (number, row) in enumerate(ranked, start=1):
        key = tuple(row["widths"])
        cells = [_cell(rank, str(rank))]
        if view.multiple:
            cells.append(_cell(order.get(row["budget"]), str(row["budget"])))
        cells += [
            _cell(row["score"], f"{row['score']:.4f}"),
            _cell(row.get("accuracy"), _maybe(row.get("accuracy"), "{:.2%}")),
            _cell(_ratio(row["macs"], view.base_macs), _percent(row["macs"], view.base_macs)),
            _cell(_ratio(row["params"], view.base_params), _percent(row["params"], view.base_params)),
        ]
        if latency:
            cells.append(_cell(row.get("latency_ms"), _maybe(row.get("latency_ms"), "{:.3g}")))
        cells += [
            _cell(row["iteration"] + 1, str(row["iteration"] + 1)),
            _cell(row["particle"], str(row["particle"])),
            _cell(number, str(number)),
        ]
        if finalist_scores:
            score = finalist_scores.get(key)
            cells.append(
                _cell(score, "-" if key not in finalist_scores else _maybe(score, "{:.4f}", "failed"))
            )
        cells.append(_cell(int(key in front), "✓" if key in front else ""))
        body.append(f"<tr>{''.join(cells)}</tr>")
    caption = (
        f"The {len(ranked)} best distinct candidates by proxy score (of {len(first)}); "
        "click a column to sort. "
        "Iterations count from 1 (history.sqlite's iteration + 1); front: Pareto-optimal in MACs, params "
        "(and predicted latency) against the score, as `acp front` lists them"
        + (", over every budget's evaluations." if view.multiple else ".")
    )
    table = (
        f'<table class="sortable" id="top-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return _section("top", "Top candidates", f'<div class="scroll">{table}</div>', caption)


def _failed(view) -> str:
    failed = [(row["iteration"] + 1, str(row["particle"]), row) for row in view.rows if row["score"] is None]
    failed += [("finalist", "-", row) for row in view.finalists if row["score"] is None]
    if not failed:
        return _section("failed", "Failed evaluations", "<p>None.</p>")
    lines = [
        "<tr>"
        + (f"<td>{escape(str(row.get('budget') or '-'))}</td>" if view.multiple else "")
        + f"<td>{iteration}</td><td>{particle}</td><td>{_percent(row.get('macs'), view.base_macs)}</td>"
        f"<td class=reason>{escape(_reason(row.get('status')))}</td></tr>"
        for iteration, particle, row in failed[:FAILED_SHOWN]
    ]
    more = len(failed) - FAILED_SHOWN
    tail = f"<p>and {more} more (in history.sqlite).</p>" if more > 0 else ""
    head = (
        "<tr>"
        + ("<th>budget</th>" if view.multiple else "")
        + '<th>iteration</th><th>particle</th><th>MACs</th><th class="reason">reason</th></tr>'
    )
    reasons: dict[str, int] = {}
    for *_, row in failed:
        reasons[_reason(row.get("status"))] = reasons.get(_reason(row.get("status")), 0) + 1
    common, count = max(reasons.items(), key=lambda item: item[1])
    summary = f"{len(failed)} failed ({len(reasons)} distinct reasons; most often, {count}x: {common})"
    table = f"<table>{head}{''.join(lines)}</table>{tail}"
    opened = " open" if len(failed) <= 15 else ""
    body = f"<details{opened}><summary>{escape(summary)}</summary>{table}</details>"
    return _section("failed", f"Failed evaluations ({len(failed)})", body)


def _config(view) -> str:
    if view.config_text is None:
        return _section("config", "Configuration", "<p>No config.toml in the run directory.</p>")
    return _section("config", "Configuration (config.toml)", f"<pre>{escape(view.config_text)}</pre>")


def _versions(view) -> str:
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in view.versions.items()
    )
    caption = "Of the environment that wrote this page (best_arch.json records the acp version of the run)."
    return _section("versions", "Versions", f'<table class="facts">{rows}</table>', caption)


# --- helpers ------------------------------------------------------------------------------------------


def pareto_front(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, higher score), by increasing cost; NaN costs are
    left out, and of equal points the first."""
    costs, scores = np.asarray(costs, dtype=float), np.asarray(scores, dtype=float)
    order = [i for i in np.lexsort((-scores, costs)) if np.isfinite(costs[i])]
    front, best = [], -np.inf
    for index in order:
        if scores[index] > best:
            front.append(index)
            best = scores[index]
    return np.array(front, dtype=np.int64)


def _colours(view) -> dict[str, str]:
    """One colour per budget of a multi-budget run, in the config's order (as ``acp front`` plots them)."""
    from acp.workflows.front import budget_colours

    return budget_colours(part.label for part in view.budgets)


def _by_budget(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get("budget")), []).append(row)
    return groups


def _figure(panels: int, *, height: float, sharey: bool = False, bottom: float = 0.55, right: float = 0.2):
    """A row of ``panels`` axes with fixed margins in inches (a layout engine would double the time)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_INCHES, height), dpi=100)
    figure.subplots(1, panels, sharey=sharey, squeeze=False)
    figure.subplots_adjust(
        left=0.75 / WIDTH_INCHES,
        right=1 - right / WIDTH_INCHES,
        bottom=bottom / height,
        top=1 - 0.35 / height,
        wspace=0.25 if not sharey else 0.08,
    )
    return figure


def _image(figure, alt: str) -> str:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "acp"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _section(anchor: str, title: str, body: str, caption: str = "") -> str:
    caption = f'<p class="caption">{escape(caption)}</p>' if caption else ""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}{caption}</section>'


def _cell(value, text: str) -> str:
    number = "" if value is None else f"{float(value):.10g}"
    return f'<td data-value="{number}">{escape(text)}</td>'


def _candidate_line(view, record: dict) -> str:
    parts = [] if record.get("score") is None else [f"proxy score {record['score']:.4f}"]
    if record.get("accuracy") is not None:
        parts.append(f"accuracy {record['accuracy']:.2%}")
    parts.append(f"MACs {_percent(record.get('macs'), view.base_macs)}")
    parts.append(f"params {_percent(record.get('params'), view.base_params)}")
    if record.get("iteration") is not None:
        parts.append(f"iteration {record['iteration'] + 1}, particle {record.get('particle')}")
    return ", ".join(parts)


def _ratio(value, base):
    return None if value is None or not base else value / base


def _measured_latency(record: dict) -> str:
    """A winner's measured latency, as ``best_arch.json``'s latency record has it."""
    base = record.get("base_measured_ms")
    text = f"{record['measured_ms']:.3g} ms" + (f" (base {base:.3g} ms)" if base else "")
    if record.get("measured_budget_met") is False:
        text += ", measured budget NOT met"
    return text


def _percent(value, base) -> str:
    if value is None:
        return "-"
    return f"{value / base:.1%}" if base else f"{value:,}"


def _maybe(value, form: str, missing: str = "-") -> str:
    return missing if value is None else form.format(value)


def _reason(status: str | None) -> str:
    text = status or "failed"
    return text.split(":", 1)[1].strip() if text.startswith("failed:") else text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _time_unit(longest: float) -> tuple[str, float]:
    return ("s", 1.0) if longest < 120 else ("min", 60.0) if longest < 7200 else ("h", 3600.0)


def _clock(moment: datetime) -> str:
    return escape(moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))


def _short(group_id: str, limit: int = 18) -> str:
    return group_id if len(group_id) <= limit else "…" + group_id[-(limit - 1) :]


def _tex_safe(text: str) -> str:
    return text.replace("$", r"\$")  # matplotlib reads $...$ as mathematics


STYLE = """
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
background:#fafafa}
main{max-width:940px;margin:0 auto;padding:16px 20px 40px;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
.where{color:#666;margin:0;font-family:ui-monospace,monospace;font-size:.85em;word-break:break-all}
img{display:block;width:100%;max-width:900px;height:auto}
table{border-collapse:collapse;font-size:.9em}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
table.facts th{text-align:left;color:#555;font-weight:600;white-space:nowrap}table.facts td{text-align:left}
.reason{text-align:left}td.reason{font-family:ui-monospace,monospace;font-size:.85em}
table.sortable th{cursor:pointer;user-select:none;background:#f3f3f3;position:sticky;top:0}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
table.sortable tbody tr:hover{background:#f5f9ff}
.scroll{overflow-x:auto}summary{cursor:pointer;margin:.3em 0}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:.85em}
.caption{color:#555;font-size:.85em}.note{color:#a15c00}
.running{color:#0a7d32;font-weight:600}.finished{color:#1d4ed8;font-weight:600}
.stopped{color:#b45309;font-weight:600}.waiting{color:#777;font-weight:600}
footer{margin-top:2em;color:#777;font-size:.8em}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  headers.forEach(function (header, column) {
    header.addEventListener("click", function () {
      var current = header.getAttribute("aria-sort");
      var ascending = current ? current === "descending" : header.dataset.first !== "desc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var value = function (row) {
        var text = row.cells[column].dataset.value;
        return text === "" ? -Infinity : parseFloat(text);
      };
      rows.sort(function (a, b) {
        var x = value(a), y = value(b);
        return x === y ? 0 : (x < y) === ascending ? -1 : 1;
      });
      headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
