"""Budget repair: every candidate fits the budget exactly and sits as close below it as rounding allows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.errors import UserError
from acp.prune import build_space
from acp.search.encoding import KeepRatioEncoding


@pytest.fixture(scope="module")
def space():
    return build_space(ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {}), {})[1]


@pytest.fixture(scope="module")
def coarse_space():
    return build_space(
        ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 8, "min_keep": 0.25}
    )[1]


def _no_single_step_fits(budget: Budget, widths: np.ndarray) -> bool:
    for group in np.flatnonzero(widths < budget.full):
        trial = widths.copy()
        trial[group] = min(budget.full[group], (widths[group] // budget.step[group] + 1) * budget.step[group])
        if budget.fits(*budget.space.cost(trial)):
            return False
    return True


ratios = st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12)


@settings(max_examples=40, deadline=None)
@given(ratios=st.lists(ratios, min_size=1, max_size=4), flops=st.floats(0.2, 0.9))
def test_repair_fits_flops_budget_within_one_percent(space, ratios, flops):
    budget = Budget(space, flops=flops)
    widths = budget.repair(np.array(ratios))
    assert widths.dtype == np.int64 and widths.shape == (len(ratios), len(space.groups))
    assert np.array_equal(space.snap(widths), widths)  # allowed widths only
    assert np.all(widths >= space.min_widths()) and np.all(widths <= space.full_widths())
    macs, params = space.cost(widths)
    assert np.all(macs <= flops * space.base_macs)
    for row in widths:  # as close as single allowed steps can get
        assert _no_single_step_fits(budget, row)


def test_repair_lands_within_one_percent_for_typical_particles(space):
    budget = Budget(space, flops=0.5)
    ratios = np.random.default_rng(0).uniform(0.0, 1.0, size=(500, len(space.groups)))
    macs, params = space.cost(budget.repair(ratios))
    gaps = budget.gap(macs, params)
    assert np.all(gaps >= 0)
    assert np.mean(gaps < 0.01) >= 0.99  # the rest: nearly every group full, one step overshoots
    assert np.median(gaps) < 0.002


@settings(max_examples=25, deadline=None)
@given(ratio=ratios, flops=st.floats(0.3, 0.9), params=st.floats(0.3, 0.9))
def test_repair_with_both_budgets_fits_both_and_fills_the_binding_one(space, ratio, flops, params):
    budget = Budget(space, flops=flops, params=params)
    widths = budget.repair(np.array(ratio))
    macs, n_params = space.cost(widths)
    assert macs <= flops * space.base_macs and n_params <= params * space.base_params
    assert _no_single_step_fits(budget, widths)


@settings(max_examples=25, deadline=None)
@given(ratio=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6), flops=st.floats(0.4, 0.95))
def test_coarse_rounding_gets_as_close_as_rounding_allows(coarse_space, ratio, flops):
    budget = Budget(coarse_space, flops=flops)
    widths = budget.repair(np.array(ratio))
    assert np.all(widths % 8 == 0)
    macs, params = coarse_space.cost(widths)
    assert macs <= flops * coarse_space.base_macs
    assert _no_single_step_fits(budget, widths)


def test_repair_keeps_the_shape_of_a_uniform_vector(space):
    budget = Budget(space, flops=0.5)
    widths = budget.repair(np.ones(len(space.groups)))
    kept = widths / space.full_widths()
    assert kept.max() - kept.min() < 0.08  # one ratio for all groups, up to rounding and the fix-up


def test_budget_of_one_gives_the_full_model(space):
    assert np.array_equal(Budget(space, flops=1.0).repair(np.full(12, 0.3)), space.full_widths())


def test_infeasible_budget_names_the_minimum_ratio(space):
    macs, _ = space.cost(space.min_widths())
    smallest = math.ceil(macs / space.base_macs * 10_000) / 10_000
    with pytest.raises(UserError) as error:
        Budget(space, flops=0.001)
    assert f"minimum achievable --flops is {smallest:g}" in str(error.value)
    assert "--flops 0.001 is infeasible" in str(error.value)
    Budget(space, flops=smallest)  # the named minimum itself is accepted


def test_budget_needs_a_ratio(space):
    with pytest.raises(UserError, match="give --flops R, --params R, --latency R and/or --latency-ms MS"):
        Budget(space)
    with pytest.raises(UserError, match=r"--params: expected a ratio in \(0, 1\], got 1.5"):
        Budget(space, params=1.5)


def test_encoding_round_trip(space):
    encoding = KeepRatioEncoding(space)
    widths = space.uniform_widths(0.5)
    assert np.array_equal(space.snap(encoding.decode(encoding.encode(widths))), widths)
    assert np.all(encoding.lower == space.min_widths() / space.full_widths())


# --- latency budgets (any monotone cost; the synthetic predictor of acp.testing stands in for a table) ---


@pytest.fixture(scope="module")
def latency_model(space):
    from acp.latency.table import build_latency_model
    from acp.testing import SyntheticMeter

    key = {"groups": list(space.ids), "full_widths": [int(w) for w in space.full_widths()], "batch_size": 1}
    return build_latency_model(
        space, SyntheticMeter(space, overhead=0.01), key=key, grid_points=4, calibration_models=6
    )


@pytest.mark.parametrize(
    "limits",
    [
        {"latency": 0.5},
        {"latency": 0.6, "flops": 0.4},
        {"latency": 0.45, "flops": 0.7},
        {"latency_ms": 0.45},  # as a ratio of the base latency, converted below
        {"latency": 0.6, "latency_ms": 0.5, "params": 0.5},
    ],
)
def test_repair_meets_mixed_budgets_and_fills_the_binding_one(space, latency_model, limits):
    if "latency_ms" in limits:
        limits = {**limits, "latency_ms": limits["latency_ms"] * latency_model.base_ms}
    budget = Budget(space, **limits, latency_model=latency_model)
    if "latency_ms" in limits:
        assert budget.max_ms <= limits["latency_ms"]
    rng = np.random.default_rng(0)
    widths = budget.repair(rng.uniform(0.05, 1.0, size=(24, len(space.groups))))
    macs, params = space.cost(widths)
    predicted = latency_model(widths)
    assert np.all(budget.fits(macs, params, predicted))
    assert np.all(predicted <= budget.max_ms)
    if "flops" in limits:
        assert np.all(macs <= limits["flops"] * space.base_macs)
    if "params" in limits:
        assert np.all(params <= limits["params"] * space.base_params)
    gaps = budget.widths_gap(widths)
    assert np.all(gaps >= 0) and np.median(gaps) < 0.01  # on the binding budget, as close as rounding allows
    for row in widths:
        assert _no_single_step_fits_with_latency(budget, row)


def _no_single_step_fits_with_latency(budget: Budget, widths: np.ndarray) -> bool:
    for column in np.flatnonzero(widths < budget.full):
        trial = widths.copy()
        trial[column] = min(trial[column] + budget.step[column], budget.full[column])
        macs, params = budget.space.cost(trial)
        if budget.fits(macs, params, budget.predicted_ms(trial)[0]):
            return False
    return True


def test_latency_ratio_is_relative_to_the_predicted_base(space, latency_model):
    budget = Budget(space, latency=0.5, latency_model=latency_model)
    assert budget.max_ms == pytest.approx(0.5 * latency_model.base_ms)
    assert budget.as_dict() == {"flops": None, "params": None, "latency": 0.5, "latency_ms": None}
    assert Budget(space, flops=0.5).as_dict() == {"flops": 0.5, "params": None}  # unchanged for old runs
    assert "predicted latency <=" in budget.describe()


def test_infeasible_latency_budget_names_the_minimum(space, latency_model):
    least = float(latency_model(space.min_widths())) / latency_model.base_ms
    with pytest.raises(UserError) as error:
        Budget(space, latency=least * 0.9, latency_model=latency_model)
    message = str(error.value)
    assert "is infeasible" in message and "\n" not in message
    assert f"minimum achievable is --latency {math.ceil(least * 10_000) / 10_000:g}" in message
    Budget(space, latency=math.ceil(least * 10_000) / 10_000, latency_model=latency_model)
    with pytest.raises(UserError, match="--latency-ms 0.01 is infeasible"):
        Budget(space, latency_ms=0.01, latency_model=latency_model)


def test_latency_budget_needs_a_table_and_positive_milliseconds(space, latency_model):
    with pytest.raises(UserError, match="needs a latency table"):
        Budget(space, latency=0.5)
    with pytest.raises(UserError, match="--latency-ms: expected a positive number of milliseconds"):
        Budget(space, latency_ms=-1.0, latency_model=latency_model)
    with pytest.raises(UserError, match=r"--latency: expected a ratio in \(0, 1\]"):
        Budget(space, latency=2.0, latency_model=latency_model)
