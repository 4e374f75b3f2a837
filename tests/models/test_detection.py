"""torchvision detectors in the channel space: groups through the FPN and the SSD extras, predictors kept,
exact MACs of a materialized random architecture, and the pruned detector still detects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp

from acp.cli import main
from acp.core.architecture import ModelIdentity
from acp.models import create_model, default_input_size
from acp.models.detection import head_maps, traced_network
from acp.prune import build_space, materialize, materialize_with_torch_pruning, parameter_count
from acp.testing import random_architecture

# Small heads (4 classes) and, for Faster R-CNN, a 320-pixel transform and 50 proposals keep these fast.
SSDLITE = ModelIdentity("ssdlite320_mobilenet_v3_large", 4, (3, 320, 320), {})
FASTER_KWARGS = {"min_size": 320, "max_size": 320, "rpn_post_nms_top_n_test": 50}
FASTER = ModelIdentity("fasterrcnn_mobilenet_v3_large_fpn", 4, (3, 320, 320), FASTER_KWARGS)


@pytest.fixture(scope="module")
def ssdlite():
    model, space = build_space(SSDLITE)
    return model, space


@pytest.fixture(scope="module")
def faster():
    model, space = build_space(FASTER)
    return model, space


def counted(network: torch.nn.Module, identity: ModelIdentity) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(network, torch.zeros(1, *identity.input_size))
    return int(macs), int(params)


def producers(space) -> set[str]:
    return {name for group in space.groups for name in group.producers}


def test_network_input_size_is_what_the_transform_hands_the_network():
    assert default_input_size("ssdlite320_mobilenet_v3_large") == (3, 320, 320)
    assert default_input_size("fasterrcnn_mobilenet_v3_large_fpn", FASTER_KWARGS) == (3, 320, 320)
    # GeneralizedRCNNTransform pads to a multiple of 32
    assert default_input_size("fasterrcnn_mobilenet_v3_large_fpn", {"min_size": 300, "max_size": 300}) == (
        3,
        320,
        320,
    )


def test_ssdlite_groups_cover_backbone_extras_and_head_but_not_the_predictors(ssdlite):
    _, space = ssdlite
    names = producers(space)
    assert len(space.groups) >= 30
    assert any(name.startswith("backbone.features.") for name in names)
    assert any(name.startswith("backbone.extra.") for name in names)  # the SSD extras
    assert any(name.startswith("head.classification_head.") for name in names)  # depthwise head convs
    kinds = ("classification", "regression")
    predictors = {f"head.{kind}_head.module_list.{level}.1" for kind in kinds for level in range(6)}
    assert set(space.classifiers) == predictors
    assert not names & predictors
    # shrinking every group to its minimum still removes no output channel of a predictor
    plan = space.removal_plan({group.id: range(group.min_width) for group in space.groups})
    assert not {name for name, kind in plan if kind == "conv_out"} & predictors


def test_faster_rcnn_groups_couple_the_fpn_and_keep_the_predictors(faster):
    _, space = faster
    names = producers(space)
    assert any(name.startswith("backbone.fpn.layer_blocks.") for name in names)
    # the FPN's top-down adds: one group holds every lateral (inner) conv
    inner = [group for group in space.groups if any("fpn.inner_blocks" in name for name in group.producers)]
    assert len(inner) == 1 and len([n for n in inner[0].producers if "fpn.inner_blocks" in n]) >= 2
    assert "roi_heads.box_head.fc6" in names  # the box head's hidden width is searched
    predictors = {
        "rpn.head.cls_logits",
        "rpn.head.bbox_pred",
        "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred",
    }
    assert set(space.classifiers) == predictors
    assert not names & predictors
    plan = space.removal_plan({group.id: range(group.min_width) for group in space.groups})
    assert not {name for name, kind in plan if kind in ("conv_out", "linear_out")} & predictors


def test_ssdlite_network_view_is_the_heads_own_computation(ssdlite):
    model, _ = ssdlite
    model.eval()
    images = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = list(model.backbone(images).values())
        expected = model.head(features)
        maps = head_maps("SSD", model.head, features)

    def flatten(level_maps, columns):
        return torch.cat(
            [
                m.view(1, -1, columns, *m.shape[2:]).permute(0, 3, 4, 1, 2).reshape(1, -1, columns)
                for m in level_maps
            ],
            dim=1,
        )

    half = len(maps) // 2
    assert torch.equal(flatten(maps[:half], 4), expected["cls_logits"])
    assert torch.equal(flatten(maps[half:], 4), expected["bbox_regression"])


@pytest.mark.parametrize("which", ["ssdlite", "faster"])
def test_materialized_random_architecture_has_the_predicted_cost_and_detects(which, request):
    model, space = request.getfixturevalue(which)
    identity = SSDLITE if which == "ssdlite" else FASTER
    assert counted(traced_network(model), identity) == (space.base_macs, space.base_params)
    arch = random_architecture(space, identity, np.random.default_rng(17))
    pruned = materialize(model, arch, space)
    assert arch.macs < space.base_macs
    assert counted(traced_network(pruned), identity) == (arch.macs, arch.params)
    assert parameter_count(pruned) == arch.params
    pruned.eval()
    with torch.no_grad():
        detections = pruned([torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1))])
    assert len(detections) == 1
    assert {"boxes", "labels", "scores"} <= set(detections[0])
    assert detections[0]["boxes"].shape[1:] == (4,)


def test_ssdlite_macs_equal_the_count_on_the_detectors_own_forward(ssdlite):
    """Independent of the network view: Torch-Pruning's counter on the pruned detector's eval forward on a
    list of images (transform, network, box decoding, NMS; only the network has counted modules)."""
    model, space = ssdlite
    arch = random_architecture(space, SSDLITE, np.random.default_rng(3))
    pruned = materialize(model, arch, space)
    macs, params = tp.utils.count_ops_and_params(pruned, ([torch.rand(3, 200, 300)],))
    assert (int(macs), int(params)) == (arch.macs, arch.params)


def test_acp_info_prints_a_detectors_groups(capsys):
    assert main(["info", "ssdlite320_mobilenet_v3_large"]) == 0
    out = capsys.readouterr().out
    assert "input 3x320x320" in out
    assert "detector SSD" in out and "3x320x320 tensor (what its GeneralizedRCNNTransform hands" in out
    assert "searchable channel groups" in out
    assert "head.classification_head.module_list.0.1" in out  # a predictor, kept at full width


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ssdlite320_mobilenet_v3_larg", "close matches: ssdlite320_mobilenet_v3_large"),
        ("retinanet_resnet50", "close matches: retinanet_resnet50_fpn"),
        ("maskrcnn_resnet50_fpn", "cannot prune torchvision's maskrcnn_resnet50_fpn yet"),
    ],
)
def test_unknown_or_unsupported_detector_is_a_user_error(capsys, name, expected):
    assert main(["info", name]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_detectors_are_built_without_downloading_weights():
    with pytest.raises(Exception, match="never downloads weights"):
        create_model("ssdlite320_mobilenet_v3_large", weights_backbone="DEFAULT")


SMALL = {"min_size": 256, "max_size": 256}  # the R-CNN family's transform at 256 pixels, to save time
EVERY_DETECTOR = {
    "ssdlite320_mobilenet_v3_large": ({}, (3, 320, 320)),
    "ssd300_vgg16": ({}, (3, 300, 300)),
    "retinanet_resnet50_fpn": (SMALL, (3, 256, 256)),
    "fasterrcnn_mobilenet_v3_large_fpn": ({**SMALL, "rpn_post_nms_top_n_test": 20}, (3, 256, 256)),
    "fcos_resnet50_fpn": (SMALL, (3, 256, 256)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EVERY_DETECTOR))
def test_every_listed_detector_prunes_to_its_predicted_cost(name):
    kwargs, size = EVERY_DETECTOR[name]
    assert default_input_size(name, kwargs) == size
    identity = ModelIdentity(name, 4, size, kwargs)
    model, space = build_space(identity)
    assert len(space.groups) >= 10
    assert not producers(space) & set(space.classifiers)
    arch = random_architecture(space, identity, np.random.default_rng(5))
    pruned = materialize(model, arch, space).eval()
    assert counted(traced_network(pruned), identity) == (arch.macs, arch.params)
    # square: the R-CNN family's transform hands the network a square tensor for it (SSD: any image)
    image = torch.rand(3, 200, 200, generator=torch.Generator().manual_seed(2))
    if not name.startswith("fasterrcnn"):  # the box head of Faster R-CNN runs on however many proposals
        macs, params = tp.utils.count_ops_and_params(pruned, ([image],))
        assert (int(macs), int(params)) == (arch.macs, arch.params)
    with torch.no_grad():
        (detections,) = pruned([image])
    assert detections["boxes"].shape[1:] == (4,) and detections["scores"].shape == detections["labels"].shape


def test_torch_pruning_reference_path_prunes_a_detector_the_same_way(ssdlite):
    model, space = ssdlite
    arch = random_architecture(space, SSDLITE, np.random.default_rng(11))
    fast = materialize(model, arch, space).state_dict()
    reference = materialize_with_torch_pruning(model, arch).state_dict()
    assert fast.keys() == reference.keys()
    assert all(torch.equal(fast[key], reference[key]) for key in fast)


def test_own_detector_from_a_factory(tmp_path, monkeypatch):
    """package.module:factory returning a torchvision detector (here: a small SSDlite) gets the network
    view too; its input size is the one [model].input_size gives."""
    (tmp_path / "mydetector.py").write_text(
        "from torchvision.models.detection import ssdlite320_mobilenet_v3_large\n"
        "def build(num_classes=3):\n"
        "    return ssdlite320_mobilenet_v3_large(\n"
        "        weights=None, weights_backbone=None, num_classes=num_classes, width_mult=0.5\n"
        "    )\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    identity = ModelIdentity("mydetector:build", 3, (3, 320, 320), {})
    model, space = build_space(identity)
    assert any(name.startswith("backbone.extra.") for name in producers(space))
    assert all(name.startswith("head.") for name in space.classifiers)
    arch = random_architecture(space, identity, np.random.default_rng(0))
    assert counted(traced_network(materialize(model, arch, space)), identity) == (arch.macs, arch.params)
