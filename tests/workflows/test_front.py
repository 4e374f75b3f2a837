"""``acp front``: Pareto-optimal architectures of a hand-made history, and of a real run, exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import Architecture
from acp.models import create_model
from acp.workflows.front import front_points, pareto_optimal


def row(widths, macs, params, score, iteration=0, particle=0):
    return {
        "widths": widths,
        "macs": macs,
        "params": params,
        "score": score,
        "iteration": iteration,
        "particle": particle,
    }


HAND_MADE = [
    row([4, 4], 100, 50, 0.70, 0, 0),  # on the front: cheapest MACs
    row([4, 6], 100, 60, 0.65, 0, 1),  # dominated by [4, 4] (same MACs, more params, lower score)
    row([6, 6], 120, 40, 0.80, 0, 2),  # on the front: fewest params, best score so far
    row([6, 8], 130, 45, 0.75, 1, 0),  # dominated by [6, 6]
    row([8, 8], 150, 70, 0.90, 1, 1),  # on the front: best score
    row([6, 6], 120, 40, 0.85, 1, 2),  # revisited: the better score counts
    row([8, 6], 140, 65, None, 1, 3),  # failed: left out
]


def test_front_of_a_hand_made_history():
    points = front_points(HAND_MADE, [{"widths": [8, 8], "score": 0.5}])
    assert [p.widths for p in points] == [(4, 4), (4, 6), (6, 6), (6, 8), (8, 8)]  # by MACs, then params
    assert [p.on_front for p in points] == [True, False, True, False, True]
    by_widths = {p.widths: p for p in points}
    assert by_widths[(6, 6)].score == 0.85 and by_widths[(6, 6)].iteration == 1
    assert by_widths[(8, 8)].finalist_score == 0.5 and by_widths[(4, 4)].finalist_score is None


def test_the_front_over_chosen_costs():
    assert [p.on_front for p in front_points(HAND_MADE, costs=("macs",))] == [True, False, True, False, True]
    assert [p.on_front for p in front_points(HAND_MADE, costs=("params",))] == [
        False,
        False,
        True,
        False,
        True,
    ]
    rows = [row([4], 100, 50, 0.7), row([5], 100, 50, 0.6)]
    assert [p.on_front for p in front_points(rows, latency_ms=[2.0, 1.0], costs=("macs", "params"))] == [
        True,
        False,
    ]  # the faster one counts only when latency is one of the costs


def test_latency_counts_only_when_every_point_has_one():
    rows = [row([4], 100, 50, 0.7), row([5], 100, 50, 0.6)]
    assert [p.on_front for p in front_points(rows)] == [True, False]
    faster = front_points(rows, latency_ms=[2.0, 1.0])  # the second is faster: a trade-off now
    assert [p.on_front for p in faster] == [True, True] and faster[1].latency_ms == 1.0
    assert [p.on_front for p in front_points(rows, latency_ms=[2.0, None])] == [True, False]


def test_a_long_front_is_printed_spread_over_each_budget_with_its_best():
    from pathlib import Path

    from acp.workflows.front import FrontPoint, RunFront

    def point(budget, params, score):
        return FrontPoint((params,), score, 100, params, None, budget, 0, 0, None, True)

    # budget "a": 10 points, its best score in the middle; budget "b": 3 points
    points = [point("a", params, -abs(params - 5.2)) for params in range(10)]
    points += [point("b", 20 + params, float(params)) for params in range(3)]
    front = RunFront(Path("run"), points, 1000, 100, None, "2 budgets", labels=("a", "b"))
    assert [number for number, _ in front.shown(0)] == list(range(1, 14)) == [n for n, _ in front.shown(13)]
    shown = front.shown(6)
    numbers = [number for number, _ in shown]
    assert numbers == sorted(numbers) and len(shown) == 6
    assert [p.params for _, p in shown if p.budget == "a"] == [0, 5, 9]  # both ends and the best
    assert [p.params for _, p in shown if p.budget == "b"] == [20, 21, 22]
    assert [p.params for _, p in front.shown(2)] == [5, 22]  # one row each: its best
    lines = front.table_lines(6)
    assert len(lines) == 7 and lines[2].split()[:2] == ["6", "a"]  # the front's own numbers


def test_pareto_optimal_keeps_ties_and_drops_the_dominated():
    costs = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.5, 3.0]])
    scores = np.array([0.5, 0.5, 0.4, 0.5])
    assert pareto_optimal(costs, scores).tolist() == [True, True, False, True]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("front")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), directory / "weights.pt")
    (directory / "search.toml").write_text(TINY_SEARCH_CONFIG)
    run_dir = directory / "run"
    assert main(["search", str(directory / "search.toml"), "--out", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_acp_front_prints_plots_and_exports_the_front(real_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "front"
    assert main(["front", str(real_run), "--export", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("(MACs <= 50.0%; ratios of the base model):"), printed[0]
    optimal = int(printed[0].split()[0])
    assert optimal >= 1 and len(printed) == optimal + 5  # header, table head, rows, winner, plot, export
    assert printed[optimal + 2].startswith("winner (best_arch.json): MACs ")
    assert (real_run / "front.png").stat().st_size > 0
    files = sorted(out.glob("front_*.json"))
    assert len(files) == optimal
    best = Architecture.load(real_run / "best_arch.json")
    for path in files:
        arch = Architecture.load(path)  # validated on load
        assert arch.macs_ratio <= 0.5 and arch.provenance["source"] == "search"
        assert arch.preprocessing == best.preprocessing
        assert path.name.startswith("front_") and f"macs{100 * arch.macs_ratio:.1f}" in path.name
    exported = {tuple(g.width for g in Architecture.load(p).groups): Architecture.load(p) for p in files}
    winner = tuple(g.width for g in best.groups)
    if winner in exported:  # the same widths keep the same channels as the search chose
        assert [g.keep for g in exported[winner].groups] == [g.keep for g in best.groups]
    assert main(["front", str(real_run), "--export", str(out)]) == 2  # never overwrites
    assert f"--export {out} exists and is not empty" in capsys.readouterr().err


def test_front_of_a_directory_that_is_no_run_is_exit_2(tmp_path, capsys):
    assert main(["front", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no history.sqlite there" in lines[0]


def test_pareto_optimal_equals_the_definition_on_random_ties():
    """The front-so-far scan equals checking every pair, on small integer grids full of ties."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, d = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        costs, scores = rng.integers(0, 4, (n, d)).astype(float), rng.integers(0, 4, n).astype(float)
        dominated = [
            (
                ((costs <= costs[i]).all(1) & (scores >= scores[i]))
                & ((costs < costs[i]).any(1) | (scores > scores[i]))
            ).any()
            for i in range(n)
        ]
        assert pareto_optimal(costs, scores).tolist() == [not value for value in dominated]
