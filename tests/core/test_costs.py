"""The analytic cost model equals Torch-Pruning's count_ops_and_params on the materialized model, exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch_pruning as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acp.core.architecture import Architecture, ModelIdentity
from acp.prune import build_space, materialize

# name -> (create_model kwargs, input side). Big torchvision models run at small inputs to save time.
MODELS = {
    "resnet20_cifar": ({}, 32),
    "resnet56_cifar": ({}, 32),
    "vgg16_bn_cifar": ({}, 32),
    "mobilenetv2_cifar": ({}, 32),
    "resnet18": ({}, 64),
    "resnet50": ({}, 64),
    "mobilenet_v2": ({}, 64),
    "mobilenet_v3_small": ({}, 64),
    "vgg16_bn": ({}, 32),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 64),
    "densenet121": ({}, 64),
    "convnext_tiny": ({}, 32),  # channels-last MLP (Linear, GELU, Linear), LayerNorm2d, layer scales
}
QUICK = ("resnet20_cifar", "vgg16_bn_cifar", "mobilenetv2_cifar", "mobilenet_v3_small", "googlenet")
QUICK_SIZES = {"mobilenet_v3_small": 32, "googlenet": 32}
SLOW = tuple(name for name in MODELS if name not in QUICK) + QUICK


@functools.lru_cache(maxsize=4)
def space_of(name: str, side: int):
    kwargs, _ = MODELS[name]
    identity = ModelIdentity(name, None, (3, side, side), kwargs)
    # a tiny min_keep: every width from 1 to full is allowed, so the extremes get tested too
    model, space = build_space(identity, {"min_keep": 1e-6})
    return identity, model, space


def random_choice(space, rng: np.random.Generator, mode: str) -> tuple[dict, dict]:
    widths, keep = {}, {}
    for group in space.groups:
        if mode == "min":
            width = 1
        elif mode == "full":
            width = group.full_width
        else:
            width = int(rng.integers(1, group.full_width + 1))
        widths[group.id] = width
        keep[group.id] = np.sort(rng.choice(group.full_width, size=width, replace=False)).tolist()
    return widths, keep


def counted(model, side: int) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, side, side))
    assert float(macs).is_integer()
    return int(macs), int(params)


def check_exact(name: str, side: int, seed: int, mode: str) -> None:
    identity, model, space = space_of(name, side)
    widths, keep = random_choice(space, np.random.default_rng(seed), mode)
    arch = Architecture.from_widths(
        space, identity, widths, keep, space_settings=space.settings, provenance={"created": None}
    )
    pruned = materialize(model, arch, space)
    assert space.cost(widths) == counted(pruned, side) == (arch.macs, arch.params)


modes = st.sampled_from(["random", "random", "random", "min", "full"])
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, mode=modes)
def test_resnet20_cost_is_exact(seed, mode):
    check_exact("resnet20_cifar", 32, seed, mode)


@pytest.mark.parametrize("name", QUICK[1:])
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, mode=modes)
def test_cost_is_exact_quick(name, seed, mode):
    check_exact(name, QUICK_SIZES.get(name, MODELS[name][1]), seed, mode)


def test_densenet_concat_cost_is_exact_at_the_extremes():
    for seed, mode in ((0, "min"), (1, "random")):
        check_exact("densenet121", 32, seed, mode)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, mode=modes)
def test_cost_is_exact_all_models(name, seed, mode):
    check_exact(name, MODELS[name][1], seed, mode)


def test_swarm_cost_is_one_vectorized_call_with_the_same_values():
    identity, model, space = space_of("resnet20_cifar", 32)
    rng = np.random.default_rng(7)
    swarm = rng.integers(1, space.full_widths() + 1, size=(64, len(space.groups)))
    macs, params = space.cost(swarm)
    assert macs.shape == params.shape == (64,) and macs.dtype == params.dtype == np.int64
    rows = [space.cost(row) for row in swarm]
    assert macs.tolist() == [m for m, _ in rows] and params.tolist() == [p for _, p in rows]
    assert len(set(macs.tolist())) > 60  # the rows really differ


def test_cost_does_not_depend_on_which_channels_are_kept():
    identity, model, space = space_of("mobilenetv2_cifar", 32)
    widths = dict(zip(space.ids, space.uniform_widths(0.4).tolist()))
    results = set()
    for seed in range(2):
        rng = np.random.default_rng(seed)
        keep = {
            g.id: sorted(rng.choice(g.full_width, widths[g.id], replace=False).tolist()) for g in space.groups
        }
        arch = Architecture.from_widths(
            space, identity, widths, keep, provenance={"created": None}, space_settings=space.settings
        )
        results.add(counted(materialize(model, arch, space), 32))
    assert results == {space.cost(widths)}
