"""Anytime search (time limit without an iteration limit, runs that continue when given a longer limit)
and re-ranking of the finalists before best_arch.json is written."""

from __future__ import annotations

import logging

import pytest

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.budget import Budget
from acp.prune import build_space
from acp.search import store
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import DEFAULT_ITERATIONS, SearchSettings

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "status")
FINALIST_COMPARED = ("evaluator", "widths", "macs", "params", "proxy_score", "score", "status")


@pytest.fixture(scope="module")
def space():
    return build_space(IDENTITY, {})[1]


class Counting:
    """A finalist evaluator: another synthetic landscape (so the re-ranking disagrees with the proxy),
    with a token, counting its calls and raising KeyboardInterrupt on call ``interrupt_at``."""

    def __init__(self, space, *, interrupt_at: int | None = None):
        self.inner = SyntheticEvaluator(space, seed=11, identity=IDENTITY)
        self.token = "finalists-seed-11"
        self.calls, self.interrupt_at = 0, interrupt_at

    def evaluate(self, widths):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.inner.evaluate(widths)


def make_study(space, run_dir, *, evaluator=None, finalist_evaluator=None, finalists=0, **overrides):
    settings = SearchSettings(**{"particles": 5, "seed": 4, "random_particles": 1, **overrides})
    return Study(
        space,
        evaluator or SyntheticEvaluator(space, identity=IDENTITY),
        Budget(space, flops=0.5),
        settings,
        run_dir,
        proposal_widths=space.uniform_widths(0.6),
        finalist_evaluator=finalist_evaluator,
        finalists=finalists,
    )


def rows(run_dir, table="evaluations") -> list[tuple]:
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        found = history.rows() if table == "evaluations" else history.finalists()
    finally:
        history.close()
    keys = COMPARED if table == "evaluations" else FINALIST_COMPARED
    return [tuple(str(row[key]) for key in keys) for row in found]


def test_iteration_limit_follows_the_time_limit():
    assert SearchSettings().iteration_limit == DEFAULT_ITERATIONS
    assert SearchSettings(time_limit="8h").iteration_limit is None
    assert SearchSettings(time_limit="8h", iterations=50).iteration_limit == 50
    assert SearchSettings(iterations=7).iteration_limit == 7


def test_a_time_limit_without_iterations_runs_until_the_time_is_up(space, tmp_path, monkeypatch):
    import time

    ticks = iter(range(10**9))  # a clock that advances 10 ms per reading: no dependence on machine load
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) / 100)
    result = make_study(space, tmp_path / "run", time_limit="10s").run()
    assert result.stopped == "time_limit"
    assert result.iterations > DEFAULT_ITERATIONS  # the default iteration limit does not apply
    assert 10.0 <= result.seconds < 10.5  # stopped at the first iteration boundary after the limit
    assert len(result.elapsed_per_iteration) == result.iterations
    assert result.elapsed_per_iteration == sorted(result.elapsed_per_iteration)


def test_a_stopped_run_continues_bit_exactly_with_a_longer_limit(space, tmp_path):
    timed, whole = tmp_path / "timed", tmp_path / "whole"
    slow = SyntheticEvaluator(space, identity=IDENTITY, sleep=0.01)
    first = make_study(space, timed, evaluator=slow, time_limit="0.5s").run()
    assert first.stopped == "time_limit" and first.iterations >= 1
    total = first.iterations + 4
    resumed = make_study(space, timed, iterations=total, time_limit="1h").run(resume=True)
    assert resumed.stopped == "iterations" and resumed.iterations == total
    make_study(space, whole, iterations=total).run()
    assert rows(timed) == rows(whole)
    # an iteration limit reached is extended the same way
    more = make_study(space, whole, iterations=total + 3).run(resume=True)
    assert more.iterations == total + 3 and len(rows(whole)) == 5 * (total + 3)
    fresh = tmp_path / "fresh"
    make_study(space, fresh, iterations=total + 3).run()
    assert rows(whole) == rows(fresh)


def test_the_inertia_schedule_does_not_depend_on_the_stop_rule(space, tmp_path):
    make_study(space, tmp_path / "short", iterations=3).run()
    make_study(space, tmp_path / "long", iterations=6).run()
    assert rows(tmp_path / "long")[:15] == rows(tmp_path / "short")


def test_finalists_are_rescored_and_the_best_of_them_wins(space, tmp_path):
    run_dir = tmp_path / "run"
    finalist = Counting(space)
    result = make_study(space, run_dir, iterations=6, finalist_evaluator=finalist, finalists=4).run()
    history = store.History(run_dir / store.HISTORY_FILE)
    evaluations, finalists = history.rows(), history.finalists()
    history.close()
    assert finalist.calls == 4 == len(finalists) == len(result.finalists)
    # the finalists are the 4 best distinct candidates by proxy score, best first
    distinct = {}
    for row in evaluations:
        distinct.setdefault(str(row["widths"]), row["score"])
    top = sorted(distinct.values(), reverse=True)[:4]
    assert [row["proxy_score"] for row in finalists] == top
    assert all(row["evaluator"] == "finalists-seed-11" and row["status"] == "ok" for row in finalists)
    winner = max(finalists, key=lambda row: row["score"])
    assert result.best["widths"] == winner["widths"] and result.best["finalist_score"] == winner["score"]
    assert result.proxy_best["score"] == top[0]
    arch = Architecture.load(run_dir / "best_arch.json")
    assert list(arch.widths.values()) == winner["widths"]
    assert arch.provenance["finalist_score"] == winner["score"] and arch.provenance["finalists"] == 4
    assert arch.provenance["proxy_rank"] == 1 + [row["widths"] for row in finalists].index(winner["widths"])
    assert any("re-ranked 4 finalists" in line for line in result.summary_lines())


def test_rerank_is_deterministic_and_resumes_after_ctrl_c(space, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    make_study(space, whole, iterations=5, finalist_evaluator=Counting(space), finalists=5).run()
    with pytest.raises(KeyboardInterrupt):
        make_study(
            space, cut, iterations=5, finalist_evaluator=Counting(space, interrupt_at=3), finalists=5
        ).run()
    assert len(rows(cut, "finalists")) == 2  # the first chunk of one (workers = 1) at a time is kept
    again = Counting(space)
    result = make_study(space, cut, iterations=5, finalist_evaluator=again, finalists=5).run(resume=True)
    assert again.calls == 3  # only the finalists not scored before the interruption
    assert rows(cut, "finalists") == rows(whole, "finalists") and rows(cut) == rows(whole)
    cut_arch, whole_arch = (Architecture.load(path / "best_arch.json") for path in (cut, whole))
    assert cut_arch.content_equal(whole_arch)
    # resuming a finished run re-scores nothing and keeps the winner
    idle = Counting(space)
    same = make_study(space, cut, iterations=5, finalist_evaluator=idle, finalists=5).run(resume=True)
    assert idle.calls == 0 and same.best == result.best


def test_an_extended_run_rescores_only_new_finalists(space, tmp_path):
    run_dir = tmp_path / "run"
    make_study(space, run_dir, iterations=3, finalist_evaluator=Counting(space), finalists=3).run()
    before = {str(row[1]) for row in rows(run_dir, "finalists")}
    later = Counting(space)
    result = make_study(space, run_dir, iterations=12, finalist_evaluator=later, finalists=3).run(resume=True)
    current = {str(row["widths"]) for row in result.finalists}
    assert later.calls == len(current - before)
    assert result.best["finalist_score"] == max(row["finalist_score"] for row in result.finalists)


def test_the_random_engine_is_a_resumable_baseline(space, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = make_study(space, whole, iterations=4, engine="random").run()
    assert result.proposal is None and result.uniform is None and result.evaluations == 20
    widths = [row[2] for row in rows(whole)]
    assert len(set(widths)) == 20  # uniform draws: no particle starts at the proposal or repeats
    make_study(space, cut, iterations=2, engine="random").run()
    make_study(space, cut, iterations=4, engine="random").run(resume=True)
    assert rows(cut) == rows(whole)
    other = make_study(space, tmp_path / "other", iterations=4, engine="random", seed=5).run()
    assert other.best["widths"] != result.best["widths"]


def test_best_arch_holds_the_reranked_winner_after_every_kind_of_resume(space, tmp_path):
    run_dir = tmp_path / "run"
    make_study(space, run_dir, iterations=2, finalist_evaluator=Counting(space), finalists=2).run()
    for iterations, interrupt_at in ((8, 1), (8, None), (10, None)):
        finalist = Counting(space, interrupt_at=interrupt_at)
        study = make_study(space, run_dir, iterations=iterations, finalist_evaluator=finalist, finalists=2)
        if interrupt_at is not None:  # Ctrl-C while re-ranking an extended run
            with pytest.raises(KeyboardInterrupt):
                study.run(resume=True)
            continue
        result = study.run(resume=True)
        arch = Architecture.load(run_dir / "best_arch.json")
        assert list(arch.widths.values()) == result.best["widths"]
        assert arch.provenance["finalist_score"] == result.best["finalist_score"]


def test_a_resume_says_where_it_continues(space, tmp_path, caplog):
    run_dir = tmp_path / "run"
    make_study(space, run_dir, iterations=2).run()
    with caplog.at_level(logging.INFO, logger="acp.search.study"):
        make_study(space, run_dir, iterations=2).run(resume=True)
        make_study(space, run_dir, iterations=3).run(resume=True)
    messages = [record.getMessage() for record in caplog.records]
    messages = [message for message in messages if message.startswith("resuming")]
    assert messages == [
        f"resuming {run_dir}: its iterations is reached at iteration 2 of 2 (10 evaluations done); "
        "pass a larger --iterations or --time-limit to search on",
        f"resuming {run_dir} at iteration 3 of 3 (10 evaluations done)",
    ]


def test_the_report_counts_iterations_and_evaluations_in_whole_numbers(space, tmp_path):
    import matplotlib.pyplot as plt

    from acp.search.report import report_figure

    run_dir = tmp_path / "run"
    result = make_study(space, run_dir, iterations=2).run()
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        figure = report_figure(result, history.rows(), space.full_widths())
    finally:
        history.close()
    try:
        figure.canvas.draw()
        curve, colour_bar = figure.axes[0], figure.axes[-1]
        assert colour_bar.get_ylabel() == "iteration"
        for ticks in (colour_bar.get_yticks(), curve.get_xticks()):
            assert len(ticks) and all(float(tick).is_integer() for tick in ticks)
        low, high = colour_bar.get_ylim()
        assert (low, high) == (1, 2)  # iterations 1..N, as the progress bar and a resume count them
    finally:
        plt.close(figure)
