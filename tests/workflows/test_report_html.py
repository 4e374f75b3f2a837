"""``DIR/report.html``: its sections and numbers, escaping, its rewriting during a search (without changing
the search), and ``acp report``. The browser test is tests/workflows/test_report_browser.py."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.errors import UserError
from acp.prune import build_space
from acp.search import store
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import SearchSettings
from acp.workflows.report import LiveReport, eta_seconds, read_run, write_html_report
from acp.workflows.report_page import pareto_front

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
PARTICLES, ITERATIONS = 6, 5
REASON = "<b>bad</b> widths & more"
CONFIG = TINY_SEARCH_CONFIG.replace('weights = "weights.pt"', 'weights = "<script>alert(1)</script>.pt"')


class ProbingEvaluator:
    """The synthetic evaluator, failing some candidates with an HTML-looking reason; at the first particle of
    every iteration it keeps what ``report.html`` says at that moment."""

    def __init__(self, space, run_dir):
        self.inner = SyntheticEvaluator(space, identity=IDENTITY)
        self.run_dir = run_dir
        self.seen: list[str | None] = []
        self.calls = 0

    def evaluate(self, widths):
        if self.calls % PARTICLES == 0:
            path = self.run_dir / "report.html"
            self.seen.append(path.read_text(encoding="utf-8") if path.exists() else None)
        self.calls += 1
        if sum(widths) % 4 == 0:
            raise ValueError(REASON)
        return self.inner.evaluate(widths)

    def architecture(self, *args, **kwargs):
        return self.inner.architecture(*args, **kwargs)


@pytest.fixture(scope="module")
def space():
    return build_space(IDENTITY, {})[1]


def run_study(space, run_dir, *, hook: str | None = "live"):
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(CONFIG, encoding="utf-8")
    settings = SearchSettings(particles=PARTICLES, iterations=ITERATIONS, seed=3)
    budget = Budget(space, flops=0.5)
    evaluator = ProbingEvaluator(space, run_dir)
    live = None
    if hook == "live":
        live = LiveReport(run_dir, space=space, budget=budget, search_settings=settings, min_interval=0)
    elif hook == "raising":

        def live(state, status):
            raise RuntimeError("the report broke")

    study = Study(
        space,
        evaluator,
        budget,
        settings,
        run_dir,
        proposal_widths=space.uniform_widths(0.6),
        on_iteration=live,
    )
    return study.run(), evaluator, live


@pytest.fixture(scope="module")
def run(space, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    result, evaluator, live = run_study(space, run_dir)
    return run_dir, result, evaluator, live


def page(run_dir) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def top_rows(html: str) -> list[list[float | None]]:
    body = re.search(r'<table class="sortable" id="top-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [
        [float(value) if value else None for value in re.findall(r'<td data-value="([^"]*)"', row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def test_the_page_has_every_section_and_the_right_numbers(run):
    run_dir, result, _, _ = run
    html = page(run_dir)
    for anchor in ("status", "best", "progress", "plane", "widths", "top", "failed", "config", "versions"):
        assert f'<section id="{anchor}">' in html, anchor
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    scores = [row["score"] for row in rows if row["score"] is not None]
    assert 0 < result.failed < len(rows) == PARTICLES * ITERATIONS
    first = top_rows(html)[0]
    assert first[0] == 1 and first[1] == pytest.approx(max(scores), rel=1e-9) == result.best_score
    assert len(top_rows(html)) == min(30, len({tuple(row["widths"]) for row in rows if row["score"]}))
    assert "finished</span>: reached its iteration limit" in html
    assert f"<td>{ITERATIONS} of {ITERATIONS}</td>" in html
    assert f"<td>{len(rows)} ({result.failed} failed)</td>" in html
    assert f"{result.best_score:.4f}" in html and "MACs &lt;= 50.0%" in html
    assert html.count('<img alt="') == 3 and "data:image/svg+xml;base64," in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_failures_and_the_config_are_shown_escaped(run):
    run_dir, result, _, _ = run
    html = page(run_dir)
    assert f"Failed evaluations ({result.failed})" in html
    assert "ValueError: &lt;b&gt;bad&lt;/b&gt; widths &amp; more" in html and REASON not in html
    assert "weights = &quot;&lt;script&gt;alert(1)&lt;/script&gt;.pt&quot;" in html
    assert "<script>alert" not in html and html.count("<script>") == 1  # the table sorting, nothing else


def test_the_page_is_rewritten_after_every_iteration(run):
    run_dir, _, evaluator, live = run
    seen = evaluator.seen  # report.html as the first particle of iteration k + 1 found it
    assert len(seen) == ITERATIONS and seen[0] is None
    for iteration, html in enumerate(seen[1:], start=1):
        assert f"<td>{iteration} of {ITERATIONS}</td>" in html, iteration
        assert '<span class="running">running</span>' in html and "time left" in html
        assert '<meta http-equiv="refresh"' in html
    assert live.writes == ITERATIONS + 1  # every iteration, and once at the end
    assert '<meta http-equiv="refresh"' not in page(run_dir) and "time left" not in page(run_dir)


def test_the_hook_changes_nothing_of_the_search_even_when_it_fails(run, space, tmp_path, caplog):
    run_dir = run[0]

    def search_record(directory):
        rows = store.History(directory / store.HISTORY_FILE).rows()
        checkpoint = store.read_checkpoint(directory)
        study = {key: value for key, value in checkpoint["study"].items() if "elapsed" not in key}
        return [{k: v for k, v in row.items() if k not in ("seconds", "worker")} for row in rows], (
            checkpoint["swarm"],
            study,
        )

    run_study(space, tmp_path / "plain", hook=None)
    with caplog.at_level(logging.WARNING):
        result, _, _ = run_study(space, tmp_path / "raising", hook="raising")
    assert result.iterations == ITERATIONS
    assert caplog.text.count("on_iteration (running) failed: the report broke") == ITERATIONS
    assert search_record(run_dir) == search_record(tmp_path / "plain") == search_record(tmp_path / "raising")
    assert (run_dir / "best_arch.json").read_bytes() != b""


def test_a_throttled_live_report_skips_writes_but_never_the_last(run, tmp_path):
    run_dir = run[0]
    state = store.read_checkpoint(run_dir)["study"]
    live = LiveReport(run_dir, min_interval=3600)
    live(state, "running")
    live(state, "running")  # within the hour: skipped
    assert live.writes == 1
    live(state, "finished")
    assert live.writes == 2 and "finished</span>" in page(run_dir)


def test_read_back_without_the_space_matches_the_live_numbers(run):
    run_dir = run[0]
    view = read_run(run_dir)
    assert view.status == "finished" and view.base_macs is not None  # from best_arch.json
    assert view.winner["widths"] == view.state["best"]["widths"]
    assert view.iteration_limit == 2  # config.toml's own (the study was given 5): the page says "5"
    html = write_html_report(run_dir).read_text(encoding="utf-8")
    assert f"<td>{ITERATIONS}</td>" in html


def test_not_a_run_directory_is_a_user_error_naming_the_file(tmp_path):
    with pytest.raises(UserError, match="no history.sqlite there"):
        read_run(tmp_path)
    store.History(tmp_path / store.HISTORY_FILE, create=True).close()
    with pytest.raises(UserError, match="no checkpoint.json there"):
        write_html_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_pareto_front():
    costs = np.array([0.5, 0.4, 0.4, 0.3, 0.6, np.nan, 0.3])
    scores = np.array([0.9, 0.8, 0.85, 0.7, 0.88, 1.0, 0.7])
    # 0.6/0.88 is dominated by 0.5/0.9; of two equal points, the first; a NaN cost is left out
    assert pareto_front(costs, scores).tolist() == [3, 2, 0]
    assert pareto_front(np.array([]), np.array([])).tolist() == []


def test_the_top_table_sorts_by_data_values(run):
    rows = top_rows(page(run[0]))
    scores = [row[1] for row in rows]
    assert scores == sorted(scores, reverse=True)


def test_ctrl_c_leaves_a_page_that_says_how_to_resume(space, tmp_path):
    class Interrupting(ProbingEvaluator):
        def evaluate(self, widths):
            if self.calls == 2 * PARTICLES + 1:
                raise KeyboardInterrupt
            return super().evaluate(widths)

    settings = SearchSettings(particles=PARTICLES, iterations=ITERATIONS, seed=3)
    budget = Budget(space, flops=0.5)
    live = LiveReport(tmp_path, space=space, budget=budget, search_settings=settings, min_interval=0)
    study = Study(space, Interrupting(space, tmp_path), budget, settings, tmp_path, on_iteration=live)
    with pytest.raises(KeyboardInterrupt):
        study.run()
    html = page(tmp_path)
    assert '<span class="stopped">interrupted</span>' in html and f"acp search --resume {tmp_path}" in html
    assert f"<td>2 of {ITERATIONS}</td>" in html and "time left" in html


# --- a multi-budget run: one Study per budget into RUN/<label>/, one shared history ----------------------

LABELS = ("flops0.7", "flops0.5", "flops0.3")
MULTI_CONFIG = CONFIG.replace("flops = 0.5", "flops = [0.7, 0.5, 0.3]")


class InterruptingAt(ProbingEvaluator):
    """Ctrl-C at evaluation ``at`` (counted over the whole run)."""

    at: int | None = None

    def evaluate(self, widths):
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().evaluate(widths)


def run_multi(space, run_dir, *, interrupt_in: str | None = None):
    """As acp.workflows.search runs several budgets: each budget's Study in RUN/<label>/ on the shared
    history, the page read from disk after every iteration; ``interrupt_in``: Ctrl-C in that budget's
    second iteration."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(MULTI_CONFIG, encoding="utf-8")
    settings = SearchSettings(particles=PARTICLES, iterations=ITERATIONS, seed=3)
    budgets = {label: Budget(space, flops=float(label.removeprefix("flops"))) for label in LABELS}
    live = LiveReport(run_dir, space=space, budgets=budgets, search_settings=settings, min_interval=0)
    evaluator = InterruptingAt(space, run_dir)

    def on_iteration(state, status):
        live(None, "running" if status == "finished" else status)

    for label, budget in budgets.items():
        if label == interrupt_in:
            evaluator.at = evaluator.calls + PARTICLES + 1
        study = Study(
            space,
            evaluator,
            budget,
            settings,
            run_dir / label,
            proposal_widths=space.uniform_widths(0.6),
            on_iteration=on_iteration,
            history=run_dir / store.HISTORY_FILE,
            budget_label=label,
            resume_dir=run_dir,
        )
        try:
            study.run()
        except KeyboardInterrupt:
            return evaluator, settings
    live(None, "finished")
    return evaluator, settings


@pytest.fixture(scope="module")
def multi_run(space, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "multi"
    evaluator, settings = run_multi(space, run_dir)
    return run_dir, evaluator, settings


def budget_statuses(html: str) -> dict[str, str]:
    """{label: status} of the page's budgets table."""
    table = re.search(r'<table id="budgets-table">(.*?)</table>', html, re.S).group(1)
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]:
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        found[cells[0]] = re.sub(r"<[^>]+>", "", cells[2]).split(":")[0]
    return found


def test_a_multi_budget_page_shows_every_budget(multi_run):
    run_dir, _, _ = multi_run
    html = page(run_dir)
    for anchor in ("status", "best", "progress", "plane", "widths", "top", "failed", "config", "versions"):
        assert f'<section id="{anchor}">' in html, anchor
    assert budget_statuses(html) == dict.fromkeys(LABELS, "finished")
    assert "finished</span>: every budget was searched" in html and "<td>3: 3 finished</td>" in html
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    failed = sum(row["score"] is None for row in rows)
    assert len(rows) == len(LABELS) * PARTICLES * ITERATIONS and failed > 0
    assert f"<td>{len(rows)} ({failed} failed)</td>" in html
    for label in LABELS:
        assert f"<td>{label}</td>" in html  # in the budgets table, the top table and the failed table
        state = store.read_checkpoint(run_dir / label)["study"]
        assert f"{state['best']['score']:.4f}" in html
    assert "the winners keep: flops0.7 " in html and ", flops0.3 " in html
    assert html.count('<img alt="') == 3 and "http://" not in html and "https://" not in html
    head = re.search(r'<table class="sortable" id="top-table"><thead>(.*?)</thead>', html, re.S).group(1)
    assert ">budget</th>" in head
    budgets_of_top = {row[1] for row in top_rows(html)}  # the budget column's value: its config index
    assert budgets_of_top <= {0.0, 1.0, 2.0} and len(budgets_of_top) >= 2


def test_a_multi_budget_page_while_it_runs(multi_run):
    _, evaluator, _ = multi_run
    seen = evaluator.seen  # report.html at each iteration's first particle, budget after budget
    assert len(seen) == len(LABELS) * ITERATIONS and seen[0] is None
    during_second = seen[ITERATIONS + 2]
    assert budget_statuses(during_second) == {
        "flops0.7": "finished",
        "flops0.5": "running",
        "flops0.3": "waiting",
    }
    assert '<span class="running">running</span>' in during_second and "time left" in during_second
    assert "<td>3: 1 finished, 1 running, 1 waiting</td>" in during_second


def test_an_interrupted_multi_budget_run_shows_the_rest_waiting(space, tmp_path):
    run_dir = tmp_path / "run"
    _, settings = run_multi(space, run_dir, interrupt_in="flops0.5")
    assert not (run_dir / "flops0.3").exists()
    html = page(run_dir)
    assert budget_statuses(html) == {"flops0.7": "finished", "flops0.5": "interrupted", "flops0.3": "waiting"}
    assert '<span class="stopped">interrupted</span>' in html and f"acp search --resume {run_dir}" in html
    assert "time left" in html

    view = read_run(run_dir, status="interrupted", search_settings=settings)
    first, second, _ = (part.state for part in view.budgets)
    assert view.budgets[2].state is None and second["iteration"] == 1
    durations = [np.diff([0.0, *state["elapsed_per_iteration"]]) for state in (first, second)]
    expected = durations[1][-5:].mean() * (ITERATIONS - 1) + np.concatenate(durations).mean() * ITERATIONS
    assert eta_seconds(view) == pytest.approx(expected)

    read_back = read_run(run_dir)  # as `acp report` finds it
    assert read_back.status == "unknown"
    assert [part.status for part in read_back.budgets] == ["finished", "not finished", "waiting"]


def test_acp_report_rewrites_a_multi_budget_page(multi_run, tmp_path, capsys):
    run_dir = multi_run[0]
    out = tmp_path / "again.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert budget_statuses(html) == dict.fromkeys(LABELS, "finished") and html.count('<img alt="') == 3


def test_a_multi_budget_run_without_a_started_budget_is_no_run(tmp_path):
    (tmp_path / "config.toml").write_text(MULTI_CONFIG, encoding="utf-8")
    store.History(tmp_path / store.HISTORY_FILE, create=True).close()
    with pytest.raises(UserError, match=r"no checkpoint.json there nor in its budget folders \(flops0.7, "):
        read_run(tmp_path)
