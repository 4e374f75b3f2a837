"""ChannelSpace structure: groups, exclusions, allowed widths, snapping, input validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from acp.core.graph import pruned_copy
from acp.core.space import ChannelSpace, min_width_for
from acp.errors import UserError
from acp.models import create_model

CIFAR = torch.zeros(1, 3, 32, 32)

RESNET20_GROUPS = (
    "conv1",
    "layer1.0.conv1",
    "layer1.1.conv1",
    "layer1.2.conv1",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.1.conv1",
    "layer2.2.conv1",
    "layer3.0.conv1",
    "layer3.0.conv2",
    "layer3.1.conv1",
    "layer3.2.conv1",
)


@pytest.fixture(scope="module")
def resnet20():
    model = create_model("resnet20_cifar")
    return model, ChannelSpace.build(model, CIFAR)


def test_resnet20_groups_are_stage_outputs_and_block_inner_convs(resnet20):
    _, space = resnet20
    assert space.ids == RESNET20_GROUPS
    assert space.full_widths().tolist() == [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64]
    stage2 = space.group("layer2.0.conv2")
    assert stage2.producers == ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2", "layer2.2.conv2")
    assert stage2.norms == ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2", "layer2.2.bn2")
    assert stage2.consumers == ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.downsample.0")
    inner = space.group("layer1.0.conv1")
    assert (inner.producers, inner.norms, inner.consumers) == (
        ("layer1.0.conv1",),
        ("layer1.0.bn1",),
        ("layer1.0.conv2",),
    )
    assert space.group("conv1").producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")


def test_classifier_is_never_a_dimension(resnet20):
    _, space = resnet20
    assert "fc" not in space.ids
    assert space.classifiers == ("fc",)
    assert [(g.id, g.reason) for g in space.fixed_groups] == [("fc", "changes the outputs of classifier fc")]


def test_base_cost_equals_torch_pruning_count(resnet20):
    model, space = resnet20
    macs, params = tp.utils.count_ops_and_params(model, CIFAR)
    assert (space.base_macs, space.base_params) == (int(macs), params) == (41407114, 272474)
    assert space.cost(space.full_widths()) == (space.base_macs, space.base_params)
    assert space.input_shape == (1, 3, 32, 32)


def test_build_leaves_model_untouched():
    model = create_model("resnet20_cifar")
    model.train()
    model.layer1.requires_grad_(False)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():  # Torch-Pruning needs autograd; the space must enable it itself
        space = ChannelSpace.build(model, torch.randn(4, 3, 32, 32))
    assert len(space.groups) == 12
    assert all(module.training for module in model.modules())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model._forward_hooks and not model.conv1._forward_hooks


def test_ignored_layer_globs_fix_every_group_they_touch():
    model = create_model("resnet20_cifar")
    space = ChannelSpace.build(model, CIFAR, ignored_layers=["layer3.*"])
    assert space.ids == RESNET20_GROUPS[:8]  # layer3's block outputs and inner convs are fixed
    fixed = {group.id: group.reason for group in space.fixed_groups}
    assert fixed["layer3.0.conv2"].startswith("changes the outputs of ignored layer layer3.0")
    # the ignored layers' inputs still shrink with the stage-2 group
    macs, _ = space.cost({"layer2.0.conv2": 16})
    assert macs < space.base_macs


def test_ignoring_a_container_ignores_its_layers():
    space = ChannelSpace.build(create_model("resnet20_cifar"), CIFAR, ignored_layers=["layer1"])
    assert "conv1" not in space.ids and "layer1.0.conv1" not in space.ids
    assert "layer2.0.conv1" in space.ids


def test_unmatched_ignored_pattern_is_a_user_error():
    with pytest.raises(UserError, match=r"ignored_layers\[1\]: 'layer9\.\*' matches no module"):
        ChannelSpace.build(create_model("resnet20_cifar"), CIFAR, ignored_layers=["fc", "layer9.*"])


@pytest.mark.parametrize(
    ("round_to", "min_keep", "message"),
    [(0, 0.1, "round_to"), (2.5, 0.1, "round_to"), (1, 0.0, "min_keep"), (1, 1.5, "min_keep")],
)
def test_bad_settings_are_user_errors(round_to, min_keep, message):
    with pytest.raises(UserError, match=message):
        ChannelSpace.build(create_model("resnet8_cifar"), CIFAR, round_to=round_to, min_keep=min_keep)


def test_round_to_sets_allowed_widths_and_removes_groups_without_freedom():
    space = ChannelSpace.build(create_model("resnet20_cifar"), CIFAR, round_to=8)
    assert space.group("conv1").allowed_widths().tolist() == [8, 16]
    assert space.group("layer2.0.conv1").allowed_widths().tolist() == [8, 16, 24, 32]
    assert space.group("layer3.0.conv2").allowed_widths().tolist() == [8, 16, 24, 32, 40, 48, 56, 64]
    coarse = ChannelSpace.build(create_model("resnet20_cifar"), CIFAR, round_to=16, min_keep=0.5)
    assert coarse.ids == tuple(i for i in RESNET20_GROUPS if not i.startswith(("conv1", "layer1")))
    assert coarse.group("layer2.0.conv1").allowed_widths().tolist() == [16, 32]
    reasons = {g.id: g.reason for g in coarse.fixed_groups}
    assert reasons["conv1"] == "no freedom at min_keep=0.5, round_to=16"


def test_min_width_rounding():
    assert min_width_for(10, 0.3, 1) == 3  # not 4: 0.3 * 10 is 3.0000000000000004 in floating point
    assert min_width_for(16, 0.1, 1) == 2
    assert min_width_for(64, 0.1, 8) == 8
    assert min_width_for(10, 0.05, 1) == 1
    assert min_width_for(12, 0.5, 8) == 8
    assert min_width_for(6, 0.5, 8) == 6  # round_to above the width: no freedom


def test_allowed_widths_include_full_width_off_the_grid():
    space = ChannelSpace.build(create_model("mobilenetv2_cifar"), CIFAR, round_to=8)
    group = space.group("features.1.conv.1")  # 16 wide
    assert group.allowed_widths().tolist() == [8, 16]
    odd = [g for g in space.groups if g.full_width % 8]
    for group in odd:
        allowed = group.allowed_widths()
        assert allowed[-1] == group.full_width and np.all(allowed[:-1] % 8 == 0)


def test_snap_and_uniform_widths(resnet20):
    _, space = resnet20
    assert space.uniform_widths(0.5).tolist() == [8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 32]
    assert space.uniform_widths(1.0).tolist() == space.full_widths().tolist()
    assert space.uniform_widths(0.01).tolist() == space.min_widths().tolist()
    swarm = np.array([[0.2] * 12, [100.0] * 12, [7.5] * 12])
    snapped = space.snap(swarm)
    assert snapped.dtype == np.int64 and snapped.shape == (3, 12)
    assert snapped[0].tolist() == space.min_widths().tolist()
    assert snapped[1].tolist() == space.full_widths().tolist()
    assert snapped[2].tolist() == [8] * 12  # ties go up
    coarse = ChannelSpace.build(create_model("resnet20_cifar"), CIFAR, round_to=8)
    assert coarse.snap([11.9, 12.0, 3.0, 28.1, 27.9, 28.0, 19.9, 32, 59.9, 60, 44, 1]).tolist() == [
        8,
        16,
        8,
        16,
        24,
        32,
        16,
        32,
        56,
        64,
        48,
        8,
    ]
    with pytest.raises(UserError, match="keep_ratio"):
        space.uniform_widths(0.0)


def test_cost_accepts_mappings_vectors_and_matrices(resnet20):
    _, space = resnet20
    widths = space.uniform_widths(0.5)
    single = space.cost(widths)
    assert isinstance(single[0], int) and isinstance(single[1], int)
    assert space.cost(dict(zip(space.ids, widths.tolist()))) == single
    assert space.cost(widths.tolist()) == single
    assert space.cost(widths.astype(float)) == single
    macs, params = space.cost(np.stack([widths, space.full_widths()]))
    assert macs.dtype == np.int64 and macs.tolist() == [single[0], space.base_macs]
    assert params.tolist() == [single[1], space.base_params]
    assert space.cost({"layer1.0.conv1": 16}) == (space.base_macs, space.base_params)  # missing = full


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ({"nope": 3}, "unknown channel group 'nope'"),
        ({"conv1": 17}, "group 'conv1' width 17 out of range \\[1, 16\\]"),
        ({"conv1": 0}, "group 'conv1' width 0 out of range"),
        ({"conv1": 2.5}, "expected an integer width"),
        ([1, 2, 3], "expected 12 values per row"),
        ([8.5] * 12, "expected whole numbers"),
    ],
)
def test_cost_rejects_bad_widths(resnet20, widths, message):
    _, space = resnet20
    with pytest.raises(UserError, match=message):
        space.cost(widths)


def test_space_pickles(resnet20):
    _, space = resnet20
    copy = pickle.loads(pickle.dumps(space))
    widths = space.uniform_widths(0.3)
    assert copy.cost(widths) == space.cost(widths)
    assert copy.groups == space.groups


def test_depthwise_conv_is_tied_to_its_producer():
    space = ChannelSpace.build(create_model("mobilenetv2_cifar"), CIFAR)
    expand = space.group("features.2.conv.0.0")
    assert expand.producers == ("features.2.conv.0.0", "features.2.conv.1.0")
    assert expand.norms == ("features.2.conv.0.1", "features.2.conv.1.1")
    assert expand.consumers == ("features.2.conv.1.0", "features.2.conv.2")
    assert not any(g.id == "features.2.conv.1.0" for g in (*space.groups, *space.fixed_groups))
    # inverted-residual outputs of a stage are one group
    assert space.group("features.2.conv.2").producers == ("features.2.conv.2", "features.3.conv.2")


class _ChannelsLastBlock(nn.Module):
    """ConvNeXt's block as torchvision writes it: a channels-last LayerNorm -> Linear -> GELU -> Linear MLP
    between two permutes, a layer scale of shape (C, 1, 1), and a residual add."""

    def __init__(self, channels: int = 8, hidden: int = 24):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.fc1, self.act, self.fc2 = nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels)
        self.scale = nn.Parameter(torch.full((channels, 1, 1), 0.5))
        self.head = nn.Linear(channels, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(self.act(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head((x + self.scale * y).mean((2, 3)))


def test_channels_last_layers_and_layer_scales_are_pruned_with_exact_costs():
    """The GELU's tensor is (N, H, W, hidden): its width is its last dim (it was read from dim 1, H)."""
    model = _ChannelsLastBlock()
    example = torch.zeros(1, 3, 6, 6)
    space = ChannelSpace.build(model, example)
    assert space.ids == ("stem", "fc1")
    assert [g.id for g in space.fixed_groups] == ["head"]
    keep = {"stem": [1, 2, 6], "fc1": [0, 5, 7, 11, 23]}
    pruned = pruned_copy(model, space.removal_plan(keep))
    assert pruned.scale.shape == (3, 1, 1) and pruned.norm.normalized_shape == (3,)
    assert pruned(example).shape == (1, 4)
    macs, params = tp.utils.count_ops_and_params(pruned, example)
    assert space.cost({"stem": 3, "fc1": 5}) == (int(macs), params)


def test_a_norm_over_a_concat_reads_the_group_as_a_consumer():
    """DenseNet: norm1 of the second dense layer normalizes conv0's 64 channels concatenated with the first
    layer's 32; it is not one of the group's norms (whose maps have the group's width: feature statistics
    hook them)."""
    space = ChannelSpace.build(create_model("densenet121"), CIFAR)
    stem = space.group("features.conv0")
    assert stem.norms == ("features.norm0", "features.denseblock1.denselayer1.norm1")
    assert "features.denseblock1.denselayer2.norm1" in stem.consumers


class _NormZoo(nn.Module):
    """A model with a layer acp does not slice (GroupNorm) next to ones it does (a channels-last LayerNorm
    over the channels among them)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.gn = nn.GroupNorm(2, 8)
        self.b = nn.Conv2d(8, 8, 3)
        self.ln = nn.LayerNorm(8)
        self.c = nn.Conv2d(8, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.b(torch.relu(self.gn(self.a(x))))
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.bn(self.c(x))).mean((2, 3)))


def test_unsupported_layers_keep_their_groups_fixed_and_costs_exact(caplog):
    model = _NormZoo()
    example = torch.zeros(1, 3, 16, 16)
    space = ChannelSpace.build(model, example)
    assert space.ids == ("b", "c")
    reasons = {g.id: g.reason for g in space.fixed_groups}
    assert reasons["a"] == "gn (GroupNorm) cannot be sliced by acp"
    assert "kept at full width" in caplog.text
    macs, params = tp.utils.count_ops_and_params(model, example)
    assert (space.base_macs, space.base_params) == (int(macs), params)
    keep = {"b": [0, 2, 5], "c": [1, 4]}
    pruned = pruned_copy(model, space.removal_plan(keep))
    assert pruned.ln.normalized_shape == (3,) and pruned.ln.weight.shape == (3,)
    assert pruned(example).shape == (1, 4)
    macs, params = tp.utils.count_ops_and_params(pruned, example)
    assert space.cost({"b": 3, "c": 2}) == (int(macs), params)
