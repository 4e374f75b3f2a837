"""``timm:NAME`` models: names, errors, and that acp's channel space, exact cost model, materialization,
save/load and search work on a sample of timm's CNN families. Skipped without timm (``acp[timm]``), except
the message that says how to install it."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch_pruning as tp
from conftest import TINY_SEARCH_CONFIG
from torch import nn

from acp.cli import main
from acp.core.architecture import Architecture, ModelIdentity
from acp.errors import UserError
from acp.models import check_model_name, create_model, default_input_size
from acp.models.registry import is_factory_reference
from acp.prune import build_space, load_pruned, materialize, materialize_with_torch_pruning, save_pruned
from acp.testing import random_architecture


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- names -----------------------------------------------------------------------------------------


def test_timm_names_build_untrained_with_their_configured_input_size(timm):
    model = create_model("timm:resnet18", num_classes=5)
    assert isinstance(model, timm.models.ResNet) and model.fc.out_features == 5
    assert not is_factory_reference("timm:resnet18") and is_factory_reference("acp.models:create_model")
    check_model_name("timm:resnet18")
    assert default_input_size("timm:resnet18") == (3, 224, 224)
    assert default_input_size("timm:efficientnet_b3") == (3, 288, 288)
    assert default_input_size("timm:resnet18.a3_in1k") == (3, 160, 160)  # a pretrained tag's configuration
    assert default_input_size("timm:resnet18", {"in_chans": 1, "img_size": 64}) == (1, 64, 64)
    assert create_model("timm:resnet18", in_chans=1, pretrained=False).conv1.in_channels == 1


def test_nothing_is_downloaded(timm, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("timm tried to load pretrained weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_download, raising=False)
    assert create_model("timm:resnet18.a1_in1k", num_classes=3).fc.out_features == 3


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pretrained": True}, "keyword argument 'pretrained' would download pretrained weights"),
        ({"pretrained_cfg_overlay": {"file": "w.pth"}}, "keyword argument 'pretrained_cfg_overlay'"),
        ({"pretrained_cfg": {"url": "https://x/w.pth"}}, "keyword argument 'pretrained_cfg'"),
        ({"checkpoint_path": "w.pth"}, "keyword argument 'checkpoint_path'"),
        ({"cache_dir": "/tmp"}, "keyword argument 'cache_dir'"),
        ({"colour": "blue"}, "bad arguments ['colour']"),
    ],
)
def test_arguments_that_would_load_weights_are_refused(timm, kwargs, fragment):
    message = one_line_error(create_model, "timm:resnet18", **kwargs)
    assert fragment in message and "timm:resnet18" in message


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("timm:resnt18", ["unknown timm model 'timm:resnt18'", "close matches: timm:resnet18"]),
        ("timm:efficientnet_b", ["close matches: ", "timm:efficientnet_b0"]),
        ("timm:", ["expected timm:MODEL_NAME"]),
        ("timm:resnet18.nosuchtag", ["no pretrained tag 'nosuchtag' for resnet18", "resnet18.a1_in1k"]),
        ("timm:hf-hub:timm/resnet18.a1_in1k", ["timm's registry only", "hf-hub:"]),
        ("timm:local-dir:/tmp/model", ["timm's registry only"]),
        ("convnext_atto", ["unknown model 'convnext_atto'", "timm has it: timm:convnext_atto"]),
    ],
)
def test_bad_names_are_one_line_user_errors_with_close_matches(timm, name, fragments):
    for call in (check_model_name, create_model):
        message = one_line_error(call, name)
        for fragment in fragments:
            assert fragment in message, message


def test_without_timm_the_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    for call in (check_model_name, create_model, default_input_size):
        message = one_line_error(call, "timm:resnet18")
        assert message == "model 'timm:resnet18' needs timm, which is not installed: pip install 'acp[timm]'"
    assert "timm has it" not in one_line_error(create_model, "convnext_atto")


def test_cli_bad_timm_name_is_exit_2_and_one_line(timm, capsys):
    assert main(["info", "timm:resnt18"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acp: error: "), captured.err
    assert "close matches: timm:resnet18" in lines[0] and captured.out == ""


@pytest.mark.slow
def test_real_command_bad_timm_name_is_exit_2_and_one_line(timm):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "acp", "info", "timm:resnt18"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "close matches: timm:resnet18" in lines[0], done.stderr


def test_cli_info_of_a_timm_model(timm, capsys):
    assert main(["info", "timm:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "model timm:resnet18  input 3x224x224" in out
    assert "1,822,177,768 MACs" in out  # as torchvision's resnet18: the same network
    assert "12 searchable channel groups" in out and "fc (1000): changes the outputs of classifier fc" in out


# --- channel spaces, exact costs, materialization ------------------------------------------------------

SIDE = 32
# name -> what acp makes of the family (a fixed-group reason it must give, or None: every group but the
# classifier is searchable)
FAMILIES = {
    "resnet18": None,
    "efficientnet_b0": None,  # BatchNormAct2d, squeeze-excite
    "tf_efficientnet_b0": None,  # Conv2dSame (a Conv2d subclass the op counter used to skip)
    "mobilenetv3_small_100": None,  # hard-swish, SE
    "convnext_atto": None,  # LayerNorm2d and layer-scale parameters, pruned with their channels
    "ghostnet_100": "unevenly",  # the ghost module's cat and slice: one group that cannot be cut evenly
    "regnety_002": "grouped conv",  # group width 8: acp keeps grouped convs' groups at full width
    "rexnet_100": "x[:, a:b]",  # a residual added to part of the channels: its groups stay full
}


@functools.lru_cache(maxsize=2)
def space_of(name: str):
    identity = ModelIdentity(f"timm:{name}", 10, (3, SIDE, SIDE), {})
    model, space = build_space(identity, {"min_keep": 1e-6})  # every width from 1 to full is allowed
    return identity, model, space


def counted(model) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, SIDE, SIDE))
    return int(macs), int(params)


def choice(space, seed: int, mode: str) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    widths, keep = {}, {}
    for group in space.groups:
        width = 1 if mode == "min" else int(rng.integers(1, group.full_width + 1))
        widths[group.id] = width
        keep[group.id] = np.sort(rng.choice(group.full_width, size=width, replace=False)).tolist()
    return widths, keep


@pytest.mark.parametrize("name", list(FAMILIES))
def test_space_builds_and_the_cost_model_is_exact(timm, name):
    identity, model, space = space_of(name)
    assert (space.base_macs, space.base_params) == counted(model)
    fixed = [group for group in space.fixed_groups if "classifier" not in group.reason]
    expected = FAMILIES[name]
    if expected is None:
        assert fixed == [] and len(space.groups) > 10
    else:
        assert fixed and all(expected in group.reason for group in fixed[:1]), fixed
        assert space.groups  # the rest is still searchable
    for seed, mode in ((0, "random"), (1, "min")):
        widths, keep = choice(space, seed, mode)
        arch = Architecture.from_widths(
            space, identity, widths, keep, space_settings=space.settings, provenance={"created": None}
        )
        pruned = materialize(model, arch, space).eval()
        assert space.cost(widths) == counted(pruned) == (arch.macs, arch.params)
        with torch.no_grad():
            assert pruned(torch.randn(2, 3, SIDE, SIDE)).shape == (2, 10)


def test_convnext_layer_norms_and_layer_scales_are_sliced_as_torch_pruning_does(timm):
    identity, model, space = space_of("convnext_atto")
    stem = space.group("stem.0")  # the first stage's residual stream: LayerNorm2d, convs, layer scales
    assert stem.full_width == 40
    arch = random_architecture(space, identity, np.random.default_rng(3))
    fast, reference = materialize(model, arch, space), materialize_with_torch_pruning(model, arch)
    width = arch.widths["stem.0"]
    assert fast.stem[1].normalized_shape == (width,) and fast.stages[0].blocks[0].gamma.shape == (width,)
    state, expected = fast.state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[key], expected[key]) for key in state)
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        assert torch.equal(fast.eval()(x), reference.eval()(x))


def test_subclasses_of_counted_layers_are_counted_like_their_base(timm):
    """The op counter matched types exactly: Conv2dSame convs and BatchNormAct2d norms counted 0 MACs."""
    from acp.core.space import ChannelSpace

    head = (nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), *head)
    timm_layers = nn.Sequential(
        timm.layers.Conv2dSame(3, 8, 3, stride=2), timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU), *head
    )
    x = torch.zeros(1, 3, 16, 16)
    spaces = [ChannelSpace.build(model, x) for model in (plain, timm_layers)]
    assert spaces[0].ids == spaces[1].ids == ("0",)
    assert spaces[0].base_macs == spaces[1].base_macs == counted_at(plain, x) == counted_at(timm_layers, x)
    assert spaces[0].cost({"0": 3}) == spaces[1].cost({"0": 3})
    assert spaces[0].base_macs > 8 * 8 * 8 * 27  # the conv is counted


def counted_at(model, x) -> int:
    return int(tp.utils.count_ops_and_params(model, x)[0])


def test_a_pruned_timm_model_saves_and_loads_with_identical_outputs(timm, tmp_path):
    identity, model, space = space_of("efficientnet_b0")
    arch = random_architecture(space, identity, np.random.default_rng(5))
    pruned = materialize(model, arch, space).eval()
    directory = save_pruned(pruned, arch, tmp_path / "pruned")
    assert Architecture.load(directory / "arch.json").model.name == "timm:efficientnet_b0"
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        expected = pruned(x)
        for loaded in (load_pruned(directory), load_pruned(arch, directory / "weights.pt")):
            assert torch.equal(loaded.eval()(x), expected)
            assert counted(loaded) == (arch.macs, arch.params)


def test_a_short_search_on_a_timm_model(timm, tmp_path):
    import acp

    torch.manual_seed(0)
    torch.save(create_model("timm:convnext_atto", num_classes=10).state_dict(), tmp_path / "weights.pt")
    config = (
        TINY_SEARCH_CONFIG.replace('name = "resnet8_cifar"', 'name = "timm:convnext_atto"')
        .replace("input_size = [3, 16, 16]", "input_size = [3, 32, 32]")
        .replace('spec = "digits:16"', 'spec = "digits:32"')
    )
    assert "timm:convnext_atto" in config and "digits:32" in config
    (tmp_path / "space.toml").write_text(config, encoding="utf-8")  # weights.pt: beside the config
    acp.search(str(tmp_path / "space.toml"), out=tmp_path / "run")
    arch = Architecture.load(tmp_path / "run" / "best_arch.json")
    assert arch.model.name == "timm:convnext_atto" and arch.model.input_size == (3, 32, 32)
    assert arch.macs <= 0.5 * arch.base_macs and arch.macs_ratio > 0.4
    assert 'name = "timm:convnext_atto"' in (tmp_path / "run" / "config.toml").read_text()
    pruned = acp.materialize(create_model("timm:convnext_atto", num_classes=10), arch)
    assert counted(pruned) == (arch.macs, arch.params)
