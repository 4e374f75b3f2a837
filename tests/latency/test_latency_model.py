"""The latency predictor: exact on a synthetic table, monotone, serializable, cached under its full key."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from acp.core.architecture import ModelIdentity
from acp.errors import UserError
from acp.latency import cache as latency_cache
from acp.latency import load_or_build
from acp.latency.table import FORMAT, LatencyModel, axis_levels, build_latency_model
from acp.prune import build_space
from acp.settings import LatencySettings
from acp.testing import SyntheticMeter

IDENTITY = {"name": "resnet8_cifar", "num_classes": 10, "input_size": [3, 16, 16]}


@pytest.fixture(scope="module")
def model_and_space():
    return build_space(ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 2})


@pytest.fixture(scope="module")
def space(model_and_space):
    return model_and_space[1]


def random_widths(space, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([space.snap(rng.uniform(space.min_widths(), space.full_widths())) for _ in range(count)])


def synthetic_model(space, meter=None, grid_points=4):
    meter = meter or SyntheticMeter(space)
    key = {"groups": list(space.ids), "full_widths": [int(w) for w in space.full_widths()], "batch_size": 1}
    return build_latency_model(space, meter, key=key, grid_points=grid_points, calibration_models=6), meter


def test_predictor_is_exact_on_a_synthetic_table(space):
    model, meter = synthetic_model(space)
    # every element-wise call of a ResNet (BN, ReLU, pool) has a table: no "other elements" remain
    assert all(call.timeable for call in space.elementwise_calls)
    np.testing.assert_allclose(model.coefficients, (1.3, 0.7, 0.0, 0.4), rtol=1e-6, atol=1e-9)
    widths = random_widths(space, 40, seed=1)
    np.testing.assert_allclose(model(widths), meter.truth(widths), rtol=1e-9)
    np.testing.assert_allclose(model.base_ms, meter.truth(space.full_widths())[0], rtol=1e-9)
    assert model(space.full_widths()).shape == ()


def test_element_wise_calls_without_a_table_count_as_elements(space):
    untimed = copy.copy(space)
    untimed.elementwise_calls = tuple(
        dataclasses.replace(call, timeable=False) for call in space.elementwise_calls
    )
    model, meter = synthetic_model(untimed)
    assert model.elementwise_layers == () and len(model.elementwise) == len(space.elementwise_calls)
    np.testing.assert_allclose(model.coefficients, (1.3, 0.0, 0.05, 0.4), rtol=1e-6, atol=1e-9)
    widths = random_widths(space, 20, seed=3)
    np.testing.assert_allclose(model(widths), meter.truth(widths), rtol=1e-9)


def test_element_wise_tables_are_shared_by_geometry(space):
    model, _ = synthetic_model(space)
    calls = space.elementwise_calls
    assert len(model.elementwise_layers) == len(calls)
    for call, (table, _) in zip(calls, model.elementwise_layers):
        geometry = model.tables[table].geometry
        assert geometry == call.geometry() and geometry[0] == "elementwise"
        assert model.tables[table].out_levels == (1,)
    distinct = {call.geometry() for call in calls}
    assert len({table for table, _ in model.elementwise_layers}) == len(distinct) < len(calls)


def test_standalone_elementwise_copies_take_the_width(model_and_space):
    from acp.latency.table import standalone_elementwise

    model, space = model_and_space
    for call in space.elementwise_calls:
        module, example = standalone_elementwise(model, call, 6, batch_size=3)
        assert example.shape == (3, 6, *call.in_shape[2:])
        output = module(example)
        assert output.shape[:2] == (3, 6)


def test_every_layer_is_looked_up_in_its_geometry_table(space):
    model, meter = synthetic_model(space)
    widths = random_widths(space, 5, seed=2)
    expected = [
        [
            meter.layer_ms(layer, int(layer.in_width(row[None])[0]), int(layer.out_width(row[None])[0]))
            for layer in space.compute_layers
        ]
        for row in widths
    ]
    np.testing.assert_allclose(model.layer_ms(widths), expected, rtol=1e-9)
    geometries = {layer.geometry() for layer in space.compute_layers}
    compute_tables = {table for table, _, _ in model.layers}
    assert len(compute_tables) == len(geometries) < len(space.compute_layers)  # equal geometries: one table


def test_noisy_tables_still_give_a_monotone_predictor(space):
    model, _ = synthetic_model(space, SyntheticMeter(space, noise=0.5), grid_points=6)
    widths = random_widths(space, 30, seed=3)
    base = model(widths)
    step = np.array([group.round_to for group in space.groups])
    for column in range(len(space.groups)):
        grown = widths.copy()
        grown[:, column] = np.minimum(grown[:, column] + step[column], space.full_widths()[column])
        assert np.all(model(grown) >= base - 1e-12)


def test_axis_levels_are_multiples_of_the_step_with_both_ends():
    assert axis_levels(3, 64, 5, 8) == (3, 16, 32, 48, 64)
    assert axis_levels(16, 16, 5, 8) == (16,)
    assert axis_levels(1, 9, 20, 1) == tuple(range(1, 10))


def test_serialized_model_predicts_the_same(space):
    model, _ = synthetic_model(space, SyntheticMeter(space, noise=0.2))
    again = LatencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    widths = random_widths(space, 10, seed=4)
    np.testing.assert_array_equal(again(widths), model(widths))
    assert again.calibration == model.calibration and again.key == model.key


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d.update(format="acp.latency/0"),
        lambda d: d["tables"][0].update(measured_ms=[[1.0]]),
        lambda d: d["layers"][0].update(table=99),
        lambda d: d.pop("coefficients"),
    ],
)
def test_malformed_table_is_a_user_error(space, corrupt):
    document = synthetic_model(space)[0].to_dict()
    corrupt(document)
    with pytest.raises(UserError, match="latency table"):
        LatencyModel.from_dict(document)


def test_model_for_another_space_is_refused(space):
    other = build_space(
        ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 2, "min_keep": 0.5}
    )[1]
    model, _ = synthetic_model(space)
    model.check_space(space)
    wider = build_space(ModelIdentity("resnet14_cifar", 10, (3, 16, 16), {}), {})[1]
    with pytest.raises(UserError, match="different model"):
        model.check_space(wider)
    model.check_space(other)  # same groups and widths: min_keep is part of the cache key, not the table


# --- the cache -----------------------------------------------------------------------------------------


def cached(model_and_space, settings, **kwargs):
    model, space = model_and_space
    meter = SyntheticMeter(space)
    result = load_or_build(model, space, IDENTITY, settings, meter=meter, **kwargs)
    return result, meter


def test_table_is_measured_once_then_loaded_from_the_cache(model_and_space, tmp_path):
    settings = LatencySettings(cache_dir=str(tmp_path), grid_points=3, calibration_models=4)
    (first, path, from_cache), meter = cached(model_and_space, settings)
    assert not from_cache and path.is_file() and meter.layer_calls == meter.model_calls == 1
    (second, again, from_cache), meter = cached(model_and_space, settings)
    assert from_cache and again == path and meter.layer_calls == meter.model_calls == 0
    widths = random_widths(model_and_space[1], 8, seed=5)
    np.testing.assert_array_equal(first(widths), second(widths))
    (_, _, from_cache), meter = cached(model_and_space, settings, rebuild=True)
    assert not from_cache and meter.layer_calls == 1


@pytest.mark.parametrize(
    "change",
    [
        {"runtime": "torchscript"},
        {"batch_size": 8},
        {"threads": 2},
        {"grid_points": 4},
        {"calibration_models": 5},
        {"rounds": 2},
        {"min_seconds": 0.05},
        {"seed": 1},
    ],
)
def test_changing_a_setting_measures_a_new_table(model_and_space, tmp_path, change):
    settings = LatencySettings(cache_dir=str(tmp_path), grid_points=3, calibration_models=4)
    (_, path, _), _ = cached(model_and_space, settings)
    (_, other, from_cache), meter = cached(model_and_space, dataclasses.replace(settings, **change))
    assert not from_cache and other != path and meter.layer_calls == 1


@pytest.mark.parametrize("what", ["cpu", "allocator", "versions", "model", "space"])
def test_changing_the_machine_runtime_or_model_measures_a_new_table(
    model_and_space, tmp_path, monkeypatch, what
):
    settings = LatencySettings(cache_dir=str(tmp_path), grid_points=3, calibration_models=4)
    (_, path, _), _ = cached(model_and_space, settings)
    model, space = model_and_space
    identity = IDENTITY
    if what == "cpu":
        monkeypatch.setattr(latency_cache, "cpu_model", lambda: "Another CPU @ 9 GHz")
    elif what == "allocator":
        monkeypatch.setattr(latency_cache, "steady_allocator", lambda: "system default")
    elif what == "versions":
        monkeypatch.setattr(latency_cache, "runtime_version", lambda runtime: "torch 99.0")
    elif what == "model":
        identity = {**IDENTITY, "kwargs": {"width": 2}}
    else:
        space = build_space(ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 4})[1]
    meter = SyntheticMeter(space)
    _, other, from_cache = load_or_build(model, space, identity, settings, meter=meter)
    assert not from_cache and other != path and meter.layer_calls == 1


def test_a_cache_file_with_another_key_is_not_used(model_and_space, tmp_path):
    settings = LatencySettings(cache_dir=str(tmp_path), grid_points=3, calibration_models=4)
    (_, path, _), _ = cached(model_and_space, settings)
    document = json.loads(path.read_text())
    document["key"]["threads"] = 7  # e.g. an edited or colliding file
    path.write_text(json.dumps(document))
    (_, _, from_cache), meter = cached(model_and_space, settings)
    assert not from_cache and meter.layer_calls == 1


def test_an_unreadable_cache_file_is_measured_again(model_and_space, tmp_path):
    settings = LatencySettings(cache_dir=str(tmp_path), grid_points=3, calibration_models=4)
    (_, path, _), _ = cached(model_and_space, settings)
    path.write_text("{not json")
    (_, _, from_cache), meter = cached(model_and_space, settings)
    assert not from_cache and json.loads(path.read_text())["format"] == FORMAT


# --- round_to from the measurements --------------------------------------------------------------------


class CliffMeter(SyntheticMeter):
    """Kernels that work in blocks of ``block`` output channels: 17 channels cost as much as 24."""

    def __init__(self, space, block: int):
        super().__init__(space)
        self.block = block

    def layer_ms(self, layer, cin: int, cout: int) -> float:
        return super().layer_ms(layer, cin, -(-cout // self.block) * self.block)


@pytest.mark.parametrize("block, expected", [(1, 32), (8, 8), (16, 16)])
def test_suggested_round_to_follows_the_latency_cliffs(block, expected):
    from acp.latency.rounding import rounding_scan, suggest_round_to

    space = build_space(ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {}), {})[1]
    latency, _ = synthetic_model(space, CliffMeter(space, block), grid_points=3)
    scan = rounding_scan(latency, space, CliffMeter(space, block), layers=2, window=64)
    assert len(scan.layers) == 2 and all(len(widths) == len(ms) for widths, ms in zip(scan.widths, scan.ms))
    step, costs = suggest_round_to(scan, tolerance=0.0 if block > 1 else 10.0)
    if block > 1:
        assert step == expected and costs[block] == 0.0 and costs[2 * block] > 0.0
    else:  # no cliffs: every rounding costs time; only a huge tolerance admits the largest step
        assert costs[2] > 0 and step == expected
