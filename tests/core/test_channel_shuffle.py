"""Channel shuffles (ShuffleNetV2) and models whose graph analysis fails: never a traceback.

A channel shuffle mixes the channels of its input's halves, which Torch-Pruning cannot follow; the groups
through it stay at full width and everything else is searchable, with exact costs. Any other failure of
the analysis is a one-line UserError naming the model, the layer or operation and the original error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import Dependency
from torch_pruning.dependency import index_mapping as tp_index_mapping

from acp.cli import main
from acp.core.architecture import ModelIdentity
from acp.core.graph import pruned_copy
from acp.core.space import ChannelSpace
from acp.errors import UserError
from acp.models import create_model
from acp.prune import build_space, load_pruned, materialize, save_pruned
from acp.testing import random_architecture

SHUFFLENETS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0")
# torchvision's ShuffleNetV2 class at a tenth of the width: the same blocks, built in a second
TINY_SHUFFLENET = ModelIdentity(
    "torchvision.models:ShuffleNetV2",
    10,
    (3, 32, 32),
    {"stages_repeats": [2, 1, 1], "stages_out_channels": [8, 16, 32, 64, 128]},
)


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a channel sliced from the wrong place changes the output."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)


def check_pruned_models(identity: ModelIdentity, model, space, tmp_path, seeds) -> None:
    """For random architectures: cost == Torch-Pruning's count of the materialized model, forward has the
    right shape, and a saved pruned model loads with identical outputs."""
    example = torch.zeros((1, *identity.input_size))
    images = torch.randn((2, *identity.input_size))
    for seed in seeds:
        arch = random_architecture(space, identity, np.random.default_rng(seed))
        pruned = materialize(model, arch, space).eval()
        macs, params = tp.utils.count_ops_and_params(pruned, example)
        assert space.cost(arch.widths) == (int(macs), params) == (arch.macs, arch.params)
        with torch.no_grad():
            output = pruned(images)
        assert output.shape == (2, identity.num_classes)
        directory = save_pruned(pruned, arch, tmp_path / f"pruned_{seed}")
        with torch.no_grad():
            assert torch.equal(load_pruned(directory).eval()(images), output)


# --- channel shuffle ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_shufflenet():
    model, space = build_space(TINY_SHUFFLENET, {"min_keep": 1e-6})
    randomize_batchnorm(model)
    return model.eval(), space


def test_shuffled_groups_are_fixed_and_branch_groups_searchable(tiny_shufflenet):
    _, space = tiny_shufflenet
    # the stem, each block's inner branch (1x1 -> depthwise -> 1x1) and the last conv are free
    assert space.ids == (
        "conv1.0",
        "stage2.0.branch2.0",
        "stage2.1.branch2.0",
        "stage3.0.branch2.0",
        "stage4.0.branch2.0",
        "conv5.0",
    )
    reasons = {group.id: group.reason for group in space.fixed_groups}
    shuffled = {group_id: reason for group_id, reason in reasons.items() if group_id != "fc"}
    assert "stage2.0.branch1.2" in shuffled and "stage4.0.branch2.5" in shuffled
    for reason in shuffled.values():
        assert reason.startswith("its channels pass through the channel shuffle after stage")
    assert reasons["stage2.1.branch2.5"].endswith(
        "channel shuffle after stage2.1.branch2.6 (acp keeps shuffled channels at full width)"
    )


def test_tiny_shufflenet_prunes_exactly_and_round_trips(tiny_shufflenet, tmp_path):
    model, space = tiny_shufflenet
    check_pruned_models(TINY_SHUFFLENET, model, space, tmp_path, seeds=range(4))


def test_acp_info_lists_a_shufflenets_searchable_groups(capsys):
    assert main(["info", "shufflenet_v2_x0_5"]) == 0
    out = capsys.readouterr().out
    assert "18 searchable channel groups" in out
    assert "stage3.4.branch2.0" in out and "channel shuffle after stage3.0.branch1.3" in out


@pytest.mark.parametrize(
    "name", [SHUFFLENETS[0], *(pytest.param(name, marks=pytest.mark.slow) for name in SHUFFLENETS[1:])]
)
def test_torchvision_shufflenets_prune_exactly_and_round_trip(name, tmp_path):
    identity = ModelIdentity(name, 10, (3, 64, 64), {})
    model, space = build_space(identity, {"min_keep": 1e-6})
    randomize_batchnorm(model)
    assert len(space.groups) == 18 and space.ids[0] == "conv1.0" and space.ids[-1] == "conv5.0"
    assert sum("channel shuffle" in group.reason for group in space.fixed_groups) == 16
    check_pruned_models(identity, model.eval(), space, tmp_path, seeds=range(2))


# --- torch.chunk without a shuffle ------------------------------------------------------------------


class _Chunked(nn.Module):
    """A stem whose channels are chunked into two branches: the pieces cannot be pruned independently."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(10, 12, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        left, right = torch.relu(self.bn(self.stem(x))).chunk(2, dim=1)
        x = torch.cat([self.left(left), self.right(right)], dim=1)
        return self.fc(self.head(x).mean((2, 3)))


def test_chunked_channels_are_fixed_and_the_rest_prunes_exactly():
    model, example = _Chunked().eval(), torch.zeros(1, 3, 8, 8)
    space = ChannelSpace.build(model, example, min_keep=1e-6)
    assert space.ids == ("left", "right", "head")
    reasons = {group.id: group.reason for group in space.fixed_groups}
    assert reasons["stem"] == (
        "its channels are split by the split op after bn (torch.split/chunk), whose pieces acp cannot resize"
    )
    rng = np.random.default_rng(0)
    for _ in range(5):
        widths = {group.id: int(rng.integers(1, group.full_width + 1)) for group in space.groups}
        keep = {
            group_id: np.sort(rng.choice(space.group(group_id).full_width, width, replace=False))
            for group_id, width in widths.items()
        }
        pruned = pruned_copy(model, space.removal_plan(keep))
        macs, params = tp.utils.count_ops_and_params(pruned, example)
        assert space.cost(widths) == (int(macs), params)
        assert pruned(example).shape == (1, 3)


# --- failures of the analysis -----------------------------------------------------------------------


def _fail_when_reading(monkeypatch, layer: str) -> None:
    """Torch-Pruning raises while it follows the group that reaches ``layer``."""
    original = Dependency.is_triggered_by

    def is_triggered_by(self, pruning_fn):
        triggered = original(self, pruning_fn)
        if triggered and self.target._name == layer:
            raise ZeroDivisionError("integer division or modulo by zero")
        return triggered

    monkeypatch.setattr(Dependency, "is_triggered_by", is_triggered_by)


def test_a_failing_group_is_exit_2_with_one_line_naming_model_layer_and_workaround(monkeypatch, capsys):
    _fail_when_reading(monkeypatch, "layer1.0.bn1")
    assert main(["info", "resnet20_cifar"]) == 2
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("acp: error:"))
    assert message == (
        "acp: error: cannot analyse the channels of resnet20_cifar: Torch-Pruning's group of layer1.0.conv1 "
        "could not be read at layer1.0.conv1 (Conv2d): ZeroDivisionError: integer division or modulo by "
        'zero; workaround: [space] ignored_layers = ["layer1.0.conv1"] in the search space keeps that '
        "group at full width"
    )
    assert "Traceback" not in err


def test_the_workaround_keeps_the_failing_group_at_full_width(monkeypatch):
    _fail_when_reading(monkeypatch, "layer1.0.bn1")
    model, example = create_model("resnet20_cifar"), torch.zeros(1, 3, 32, 32)
    space = ChannelSpace.build(model, example, ignored_layers=["layer1.0.conv1"])
    reasons = {group.id: group.reason for group in space.fixed_groups}
    assert "ZeroDivisionError" in reasons["layer1.0.conv1"]
    assert "layer1.1.conv1" in space.ids
    macs, params = tp.utils.count_ops_and_params(model, example)
    assert (space.base_macs, space.base_params) == (int(macs), params)


def test_an_index_mapping_that_raises_fixes_only_the_groups_through_it(monkeypatch, caplog):
    def broken(graph, node):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp_index_mapping, "update_reshape_index_mapping", broken)
    space = ChannelSpace.build(create_model("resnet20_cifar"), torch.zeros(1, 3, 32, 32))
    reasons = {group.id: group.reason for group in space.fixed_groups}
    assert reasons["layer3.0.conv2"] == (
        "its channels pass through the view op after layer3.2.bn2, which Torch-Pruning cannot follow "
        "(ZeroDivisionError: integer division or modulo by zero)"
    )
    assert "layer3.0.conv1" in space.ids and "layer2.0.conv2" in space.ids
    assert "channel groups through the view op after layer3.2.bn2" in caplog.text


def test_a_model_that_cannot_be_traced_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(UserError) as caught:
        ChannelSpace.build(model, torch.zeros(1, 3, 8, 8), model_name="too_small")
    message = str(caught.value)
    assert message.startswith(
        "cannot analyse the channels of too_small: its forward pass on an input of shape [1, 3, 8, 8] "
        "fails: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    )
    assert "\n" not in message


class _PermutedShuffle(nn.Module):
    """A channel shuffle written with permute and reshape instead of transpose and view."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.reshape(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


def test_a_shuffle_written_with_permute_and_reshape_is_recognised():
    model, example = _PermutedShuffle().eval(), torch.zeros(1, 3, 8, 8)
    space = ChannelSpace.build(model, example, min_keep=1e-6)
    assert space.ids == ("b",)
    reasons = {group.id: group.reason for group in space.fixed_groups}
    assert reasons["a"] == (
        "its channels pass through the channel shuffle after a (acp keeps shuffled channels at full width)"
    )
    pruned = pruned_copy(model, space.removal_plan({"b": [0, 2, 5]}))
    macs, params = tp.utils.count_ops_and_params(pruned, example)
    assert space.cost({"b": 3}) == (int(macs), params)
