"""The winner, measured (acp.latency.verify): a winner slower than predicted is shrunk until its measured
latency meets the budget, keeping its shape and every other budget; one the predictor got right is kept;
a budget nothing can meet is reported, not looped on."""

from __future__ import annotations

import numpy as np
import pytest

from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.latency.table import build_latency_model
from acp.latency.verify import allowed_ratio, meet_measured_budget
from acp.prune import build_space
from acp.testing import SyntheticMeter


@pytest.fixture(scope="module")
def space():
    return build_space(ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 2})[1]


@pytest.fixture(scope="module")
def latency(space):
    key = {"groups": list(space.ids), "full_widths": [int(w) for w in space.full_widths()], "batch_size": 1}
    meter = SyntheticMeter(space, overhead=0.001, layer_overhead=1e-4, per_million=0.001)
    return build_latency_model(space, meter, key=key, grid_points=4, calibration_models=6)


class SlowRuntime:
    """Measures ``latency ** power`` (x ``drift``): with power < 1 a narrow model is relatively slower than
    the predictor says, as a runtime with fixed per-call costs is."""

    def __init__(self, latency, power: float, drift: float = 1.0):
        self.latency, self.power, self.drift, self.calls = latency, power, drift, []

    def __call__(self, matrix):
        self.calls.append(np.array(matrix))
        return self.drift * np.asarray(self.latency(matrix)) ** self.power


def searched(budget: Budget, seed: int = 0) -> np.ndarray:
    shape = np.random.default_rng(seed).uniform(0.3, 1.0, len(budget.space.groups))
    return budget.repair(shape)


def test_a_winner_slower_than_predicted_is_shrunk_until_it_measures_within_the_budget(space, latency):
    budget = Budget(space, latency=0.5, latency_model=latency)
    widths = searched(budget)
    runtime = SlowRuntime(latency, power=0.8, drift=3.0)
    before = runtime(np.vstack([space.full_widths(), widths]))
    assert before[1] / before[0] > 0.5 * 1.02  # the premise: measured, the searched winner is too slow
    runtime.calls.clear()

    check = meet_measured_budget(budget, runtime, widths, tolerance=0.02, steps=6)

    assert check.met and check.shrunk
    last = check.kept_measurement
    truth = runtime(np.vstack([space.full_widths(), check.widths]))
    assert last.measured_ms == pytest.approx(truth[1]) and last.base_measured_ms == pytest.approx(truth[0])
    assert last.ratio <= 0.5 * 1.02
    assert last.allowed_ms == pytest.approx(0.5 * truth[0])
    assert np.all(check.widths <= widths) and np.all(space.snap(check.widths) == check.widths)
    assert all(np.array_equal(call[0], space.full_widths()) for call in runtime.calls)  # base in every round
    assert len(check.measurements) == len(runtime.calls) - 1 <= 6
    record = check.record()
    assert record["searched_widths"] == widths.tolist() and record["measured_budget_met"] is True
    assert record["measurements"] == len(check.measurements)
    assert any("shrunk" in line for line in check.lines())


def test_shrinking_keeps_every_other_budget(space, latency):
    budget = Budget(space, flops=0.6, latency=0.45, latency_model=latency)
    widths = searched(budget, seed=1)
    check = meet_measured_budget(budget, SlowRuntime(latency, power=0.7), widths, tolerance=0.0, steps=8)
    assert check.met
    assert budget.fits_widths(check.widths[None, :]).all()
    macs, _ = space.cost(check.widths[None, :])
    assert macs[0] <= 0.6 * space.base_macs


def test_a_winner_the_predictor_got_right_is_measured_once_and_kept(space, latency):
    budget = Budget(space, latency=0.5, latency_model=latency)
    widths = searched(budget)
    runtime = SlowRuntime(latency, power=1.0, drift=1.3)  # the machine got slower: the ratio did not
    check = meet_measured_budget(budget, runtime, widths, tolerance=0.02, steps=4)
    assert check.met and not check.shrunk and len(check.measurements) == 1
    assert np.array_equal(check.widths, widths)
    assert check.lines() == [check.lines()[0]]  # one line: what was measured


def test_a_millisecond_budget_is_met_in_measured_milliseconds(space, latency):
    limit = 0.6 * latency.base_ms
    budget = Budget(space, latency_ms=limit, latency_model=latency)
    check = meet_measured_budget(
        budget, SlowRuntime(latency, power=1.0, drift=1.25), searched(budget), tolerance=0.0, steps=6
    )
    assert check.met and check.shrunk
    assert check.kept_measurement.measured_ms <= limit
    assert allowed_ratio(budget, base_measured_ms=123.0) == pytest.approx(limit / 123.0)


def test_a_budget_no_width_meets_is_reported_after_the_last_measurement(space, latency):
    budget = Budget(space, latency=0.5, latency_model=latency)
    runtime = SlowRuntime(latency, power=0.0)  # every model takes the same time
    check = meet_measured_budget(budget, runtime, searched(budget), tolerance=0.02, steps=3)
    assert not check.met and len(check.measurements) <= 3
    assert check.record()["measured_budget_met"] is False
    assert check.lines()[-1].startswith("WARNING: measured")


class PhasedRuntime:
    """A shared machine: every call of a round is slowed by that round's factor (a slow phase lasts longer
    than a round), and the base's fastest round is not the candidate's."""

    def __init__(self, latency, factors):
        self.latency, self.factors = latency, np.asarray(factors, dtype=float)

    def __call__(self, matrix):
        exact = np.asarray(self.latency(matrix), dtype=float)[:, None] * self.factors[None, :]
        exact[0, 0] *= 0.8  # the base alone had a lucky visit
        return exact


def test_the_ratio_is_paired_by_round_so_a_slow_phase_cancels(space, latency):
    budget = Budget(space, latency=0.5, latency_model=latency)
    widths = searched(budget)
    runtime = PhasedRuntime(latency, factors=[1.0, 1.6, 1.1, 1.9, 1.3])
    check = meet_measured_budget(budget, runtime, widths, tolerance=0.02, steps=3)
    exact = latency(np.vstack([space.full_widths(), widths]))
    first = check.measurements[0]
    assert first.ratio == pytest.approx(exact[1] / exact[0])  # the min/min ratio would be 1/0.8 too high
    assert first.measured_ms == pytest.approx(exact[1] * 1.3) and first.base_measured_ms == pytest.approx(
        exact[0] * 1.3
    )
    assert check.met and not check.shrunk


class CliffRuntime:
    """Measured ratio = predicted ratio x 1.2 above a cliff at ``cliff`` of the base, x 0.8 below it (the
    base itself as predicted): the first shrink (by the miss, 1.2) lands far under the budget."""

    def __init__(self, latency, cliff: float):
        self.latency, self.cliff, self.calls = latency, cliff, 0

    def __call__(self, matrix):
        self.calls += 1
        predicted = np.asarray(self.latency(matrix), dtype=float)
        ratio = predicted / predicted[0]
        return predicted * np.where(ratio > 0.99, 1.0, np.where(ratio > self.cliff, 1.2, 0.8))


def test_a_shrink_that_overshot_grows_back_towards_the_budget(space, latency):
    budget = Budget(space, latency=0.5, latency_model=latency)
    widths = searched(budget)
    runtime = CliffRuntime(latency, cliff=0.46)
    check = meet_measured_budget(budget, runtime, widths, tolerance=0.02, steps=6)
    ratios = [m.predicted_ms / latency.base_ms for m in check.measurements]
    first_hit = next(m for m in check.measurements if m.meets(0.02))
    assert check.met and check.shrunk and len(check.measurements) == runtime.calls <= 6
    assert not check.measurements[0].meets(0.02)  # the premise: the searched widths miss
    assert check.kept_measurement.meets(0.02)
    assert check.kept_measurement.predicted_ms > first_hit.predicted_ms  # grew back from the overshoot
    assert 0.40 < ratios[check.kept] <= 0.46 + 1e-9  # the widest shape under the cliff the check found
    assert np.all(check.widths <= widths)
    assert len({m.widths for m in check.measurements}) == len(check.measurements)  # nothing measured twice
