"""The swarm's exploration: re-seeding collapsed particles (deterministic, resumable) and the landscapes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.errors import UserError
from acp.prune import build_space
from acp.search.pso import STATE_FORMAT, ParticleSwarm
from acp.search.synthetic import (
    MultimodalLandscape,
    SmoothLandscape,
    SurrogateLandscape,
    SyntheticEvaluator,
    landscape,
)
from acp.settings import SearchSettings

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
LOWER, UPPER = np.full(4, 0.1), np.ones(4)


@pytest.fixture(scope="module")
def space():
    return build_space(IDENTITY, {})[1]


def sphere_costs(positions: np.ndarray) -> np.ndarray:
    return np.sum((positions - 0.55) ** 2, axis=1)


def drive(swarm: ParticleSwarm, iterations: int) -> list[np.ndarray]:
    """ask/tell on a sphere, telling back the asked positions rounded (a stand-in for the repair)."""
    asked = []
    for _ in range(iterations):
        positions = np.round(swarm.ask(), 3)
        asked.append(positions)
        swarm.tell(positions, sphere_costs(positions))
    return asked


def swarm(**overrides) -> ParticleSwarm:
    options = {"particles": 8, "seed": 5, "reseed_after": 2, "reseed_radius": 0.05, **overrides}
    return ParticleSwarm(SearchSettings(**options), LOWER, UPPER, proposal=np.full(4, 0.5))


def test_collapsed_particles_are_reseeded_and_forget_their_memory():
    pso = swarm()
    drive(pso, 1)
    holder = int(np.argmin(pso.swarm.pbest_cost))
    stuck = [index for index in range(8) if index != holder][:2]
    pso.collapsed_for[:] = 0
    pso.collapsed_for[stuck] = 5  # two particles have sat on the best ...
    pso.collapsed_for[holder] = 5  # ... and so has the holder of the best, which must stay
    previous = pso.swarm.position.copy()
    positions = pso.ask()
    reseeded = pso._pending_reseed
    assert sorted(np.flatnonzero(reseeded)) == stuck
    for index in np.flatnonzero(reseeded):  # drawn anew in the bounds, not a PSO step
        assert np.all((positions[index] >= LOWER) & (positions[index] <= UPPER))
        assert not np.allclose(positions[index], previous[index])
    best_before = pso.swarm.best_cost
    pso.tell(positions, sphere_costs(positions))
    for index in np.flatnonzero(reseeded):
        np.testing.assert_array_equal(pso.swarm.pbest_pos[index], positions[index])
        assert pso.collapsed_for[index] == 0
    assert pso.swarm.best_cost <= best_before  # the swarm's best survives every re-seed


def test_reseeding_is_deterministic_and_off_by_zero():
    first, second = drive(swarm(), 25), drive(swarm(), 25)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    off = swarm(reseed_after=0)
    drive(off, 25)
    assert not off._collapsed().any()
    on = swarm()
    drive(on, 25)
    others = np.delete(on.collapsed_for, int(np.argmin(on.swarm.pbest_cost)))
    assert others.max() <= on.settings.reseed_after  # collapsed particles (but the best's) were re-seeded


def test_reseeding_happens_on_a_collapsing_swarm():
    pso = swarm(reseed_after=2, reseed_radius=0.2)
    reseeds = 0
    for _ in range(20):
        positions = np.round(pso.ask(), 3)
        reseeds += int(pso._pending_reseed.sum())
        pso.tell(positions, sphere_costs(positions))
    assert reseeds > 0


@pytest.mark.parametrize("split", [1, 3, 7])
def test_state_round_trip_after_reseeds_continues_bit_exactly(split):
    reference = swarm(reseed_radius=0.2)
    expected = drive(reference, 12)
    resumed = swarm(reseed_radius=0.2)
    drive(resumed, split)
    state = json.loads(json.dumps(resumed.state_dict()))  # as the checkpoint stores it
    assert state["format"] == STATE_FORMAT and "collapsed_for" in state
    fresh = swarm(reseed_radius=0.2)
    fresh.load_state_dict(state)
    for a, b in zip(expected[split:], drive(fresh, 12 - split)):
        np.testing.assert_array_equal(a, b)


def test_old_state_format_loads_and_unknown_is_refused():
    pso = swarm()
    drive(pso, 2)
    state = pso.state_dict()
    old = {key: value for key, value in state.items() if key != "collapsed_for"} | {"format": "acp.pso/1"}
    other = swarm()
    other.load_state_dict(old)
    assert other.collapsed_for.tolist() == [0] * 8
    with pytest.raises(UserError, match="format"):
        other.load_state_dict({**state, "format": "acp.pso/99"})


def test_reseed_settings_are_checked():
    with pytest.raises(UserError, match="reseed_after"):
        SearchSettings(reseed_after=-1)
    with pytest.raises(UserError, match="reseed_radius"):
        SearchSettings(reseed_radius=2.0)


# --- landscapes ---------------------------------------------------------------------------------------


def test_smooth_landscape_is_the_synthetic_evaluators(space):
    widths = space.uniform_widths(0.5)
    assert (
        SmoothLandscape(space, seed=2).evaluate(widths).score
        == SyntheticEvaluator(space, seed=2).evaluate(widths).score
    )


def test_multimodal_optimum_is_exact_and_on_the_budget(space):
    budget = Budget(space, flops=0.5)
    land = MultimodalLandscape(space, budget, seed=1)
    best = budget.repair(land.centres[0])
    assert land.evaluate(best).score == pytest.approx(land.optimum) and land.optimum == pytest.approx(1.0)
    random = budget.repair(np.random.default_rng(0).uniform(0.1, 1.0, (200, len(space.groups))))
    assert land.values(random).max() < land.optimum
    assert land.values(random).max() > 0.05  # not flat: slopes lead somewhere


def test_noise_is_a_deterministic_function_of_the_widths(space):
    budget = Budget(space, flops=0.5)
    noisy = landscape("noisy", space, budget=budget, seed=3)
    widths = budget.repair(np.random.default_rng(1).uniform(0.1, 1.0, (5, len(space.groups))))
    scores = [noisy.evaluate(row).score for row in widths]
    clone = pickle.loads(pickle.dumps(noisy))
    assert [clone.evaluate(row).score for row in widths] == scores
    truth = [noisy.evaluate(row).accuracy for row in widths]
    assert scores != truth and np.allclose(truth, noisy.values(widths))
    record = noisy.evaluate(widths[0])
    assert set(vars(record)) == {"score", "accuracy", "loss", "macs", "params", "seconds", "status"}


def test_surrogate_interpolates_its_points_and_checks_the_space(space):
    full = [int(w) for w in space.full_widths()]
    rng = np.random.default_rng(0)
    points = [[int(rng.integers(max(1, w // 4), w + 1)) for w in full] for _ in range(20)]
    scores = [float(np.mean(np.array(p) / full)) for p in points]
    document = {
        "full_widths": full,
        "points": points,
        "scores": scores,
        "kernel": {
            "amplitude": 1.0,
            "length_scales": [0.5] * len(full),
            "noise": 1e-6,
            "y_mean": float(np.mean(scores)),
            "y_scale": float(np.std(scores)),
        },
    }
    surrogate = SurrogateLandscape(space, document)
    np.testing.assert_allclose(surrogate.values(np.array(points)), scores, atol=1e-3)
    assert (
        pickle.loads(pickle.dumps(surrogate)).evaluate(points[0]).score == surrogate.evaluate(points[0]).score
    )
    with pytest.raises(ValueError, match="full widths"):
        SurrogateLandscape(space, {**document, "full_widths": [1] * len(full)})
