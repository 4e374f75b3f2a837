"""Detector statistics with box masks: every group of a real detector's space, masks that follow the
detector's own resize (and count padding as background), box_relevance on a hand-made detector whose
channels fire inside / outside the boxes, and the errors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from acp import settings as acp_settings
from acp.core.architecture import ModelIdentity
from acp.detection_data import generate_shapes
from acp.errors import UserError
from acp.propose import CRITERIA, collect_statistics, detection_statistics, make_criterion
from acp.propose.detection_features import transform_with_box_masks
from acp.prune import build_space

# SSDlite at half width, 4 outputs: the fastest detector acp traces (as in tests/proxy/)
SSDLITE = ModelIdentity("ssdlite320_mobilenet_v3_large", 4, (3, 320, 320), {"width_mult": 0.5})
SIDE = 64  # the hand-made SSD's fixed size


@dataclass(frozen=True)
class FakeGroup:
    id: str
    full_width: int
    norms: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()


@dataclass(frozen=True)
class FakeSpace:
    groups: tuple[FakeGroup, ...]


class BrightDarkBackbone(nn.Module):
    """A 1x1 conv + BN at full resolution: channel 0 is the darkness of a pixel, channel 1 its brightness
    (after the transform's normalization to [-1, 1], mean of RGB, sign-flipped for channel 0)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(2)  # fresh running statistics: the identity in eval mode
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[-1.0] * 3, [1.0] * 3]).div(3).view(2, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> OrderedDict:
        return OrderedDict([("0", torch.relu(self.bn(self.conv(images))))])


BRIGHT_DARK_SPACE = FakeSpace((FakeGroup("stem", 2, norms=("backbone.bn",), producers=("backbone.conv",)),))


def bright_dark_ssd() -> nn.Module:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    torch.manual_seed(0)
    anchors = DefaultBoxGenerator([[2]])
    normalize = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # pixels 0..1 -> -1..1
    return SSD(BrightDarkBackbone(), anchors, (SIDE, SIDE), num_classes=2, **normalize).eval()


def bright_box_image(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A dark (0.1) image with a bright (0.9) rectangle at ``box`` (x1, y1, x2, y2 in pixel edges)."""
    image = torch.full((3, height, width), 0.1)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 0.9
    return image


@pytest.fixture(scope="module")
def ssdlite():
    torch.manual_seed(0)
    model, space = build_space(SSDLITE)
    data = generate_shapes(6, 64, seed=0)
    images, targets = zip(*(data.sample(index, with_ignored=True) for index in range(len(data))))
    return model.eval(), space, list(images), list(targets)


# --- a real detector ----------------------------------------------------------------------------------


def test_every_group_of_a_detector_space_has_box_statistics_deterministically(ssdlite):
    model, space, images, targets = ssdlite
    options = {"num_images": 5, "batch_size": 3, "hrank_images": 2}
    stats = detection_statistics(model, space, images, targets, **options)
    assert stats.has_masks and stats.num_images == 5 and stats.labels is None
    assert set(stats.groups) == {group.id for group in space.groups}
    criterion = make_criterion("box_relevance", space, statistics=stats)
    for group in space.groups:
        group_stats = stats.group(group.id)
        assert group_stats.width == group.full_width and group_stats.mean_response.shape[0] == 5
        share = group_stats.foreground_share
        assert share.shape == (group.full_width,) and np.all((share >= 0) & (share <= 1))
        assert sorted(criterion.ranking(group.id).tolist()) == list(range(group.full_width))
    model.train()  # the statistics are the eval-mode network's, and the detector's modes are kept
    try:
        again = detection_statistics(model, space, images, targets, **options)
        assert all(module.training for module in model.modules())
    finally:
        model.eval()
    for group_id, group_stats in stats.groups.items():
        np.testing.assert_array_equal(group_stats.gram, again.groups[group_id].gram)
        np.testing.assert_array_equal(group_stats.foreground_share, again.groups[group_id].foreground_share)


def test_masks_follow_the_fixed_size_resize_and_leave_out_crowd_boxes(ssdlite):
    model = ssdlite[0]
    # 200 x 160 (W x H) -> SSDlite's fixed 320 x 320: x scaled by 1.6, y by 2
    image = bright_box_image(160, 200, (40, 20, 120, 100))
    target = {"boxes": torch.tensor([[40.0, 20.0, 120.0, 100.0], [0.0, 0.0, 10.0, 10.0]]), "iscrowd": [0, 1]}
    tensor, masks = transform_with_box_masks(model.transform, [image], [target])
    assert tensor.shape == (1, 3, 320, 320) and masks.shape == (1, 320, 320)
    x1, y1, x2, y2 = 64, 40, 192, 200  # 40 * 1.6, 20 * 2, 120 * 1.6, 100 * 2
    assert int(masks.sum()) == (x2 - x1) * (y2 - y1) == 128 * 160
    assert masks[0, 40:200, 64:192].all()  # the rectangle itself; the crowd box's corner stays background
    assert not masks[0, :5, :5].any()


def test_masks_of_a_padded_batch_count_the_padding_as_background():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = GeneralizedRCNNTransform(64, 128, [0.5] * 3, [0.5] * 3, size_divisible=32)
    # 40 x 50 (W x H) -> x1.6 -> 64 x 80, padded to 64 x 96; 40 x 40 -> 64 x 64 in the same batch
    images = [torch.full((3, 50, 40), 0.5), torch.full((3, 40, 40), 0.5)]
    targets = [{"boxes": [[10.0, 5.0, 30.0, 25.0]]}, {"boxes": [[0.0, 0.0, 40.0, 40.0]]}]
    tensor, masks = transform_with_box_masks(transform, images, targets)
    assert tensor.shape == (2, 3, 96, 64) and masks.shape == (2, 96, 64)
    assert int(masks[0].sum()) == 32 * 32 and masks[0, 8:40, 16:48].all()  # the box (16, 8, 48, 40)
    assert int(masks[1].sum()) == 64 * 64 and masks[1, :64].all() and not masks[1, 64:].any()


# --- box_relevance ------------------------------------------------------------------------------------


def test_box_relevance_ranks_the_channel_firing_in_boxes_above_the_background_channel():
    detector = bright_dark_ssd()
    # 64 x 32 (W x H) -> 64 x 64: the box's rows double, so unscaled boxes would miss half the object
    boxes = [(8, 8, 24, 24), (40, 2, 60, 14), (0, 20, 16, 32)]
    images = [bright_box_image(32, SIDE, box) for box in boxes]
    targets = [{"boxes": torch.tensor([box], dtype=torch.float32)} for box in boxes]
    stats = detection_statistics(detector, BRIGHT_DARK_SPACE, images, targets, batch_size=2, hrank_images=0)
    share = stats.group("stem").foreground_share
    # channel 1 (brightness) fires only in the boxes, channel 0 (darkness) only on the background
    np.testing.assert_allclose(share, [0.0, 1.0], atol=1e-6)
    criterion = make_criterion("box_relevance", BRIGHT_DARK_SPACE, statistics=stats)
    assert criterion.ranking("stem").tolist() == [1, 0]
    assert criterion.select("stem", 1).tolist() == [1]


def test_box_relevance_is_the_foreground_share_and_refuses_statistics_without_boxes():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1)))
    space = FakeSpace((FakeGroup("conv", 4, producers=("conv",)),))
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    classifier_stats = collect_statistics(model, space, images, labels=torch.tensor([0, 1, 0, 1]))
    needs_boxes = r"'box_relevance' needs detection statistics with object boxes.*use task or l2 for"
    with pytest.raises(UserError, match=needs_boxes):
        make_criterion("box_relevance", space, statistics=classifier_stats)
    with pytest.raises(UserError, match="'box_relevance' needs feature statistics"):
        make_criterion("box_relevance", space)
    masks = torch.zeros(4, 8, 8)
    masks[:, 2:6, 1:5] = 1.0
    masked = collect_statistics(model, space, images, masks=masks)
    box = make_criterion("box_relevance", space, statistics=masked)
    task = make_criterion("task", space, statistics=masked)
    share = masked.group("conv").foreground_share
    expected = np.argsort(-share, kind="stable").tolist()
    assert box.ranking("conv").tolist() == task.ranking("conv").tolist() == expected


def test_the_criterion_name_is_declared_in_settings():
    assert "box_relevance" in acp_settings.CRITERIA and set(acp_settings.CRITERIA) == set(CRITERIA)
    assert acp_settings.SearchSettings(criterion="box_relevance").criterion == "box_relevance"


# --- errors -------------------------------------------------------------------------------------------


def test_bad_inputs_are_user_errors_naming_the_problem():
    detector = bright_dark_ssd()
    image = bright_box_image(SIDE, SIDE, (8, 8, 24, 24))
    target = {"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]])}

    def statistics(images, targets, model=detector):
        return detection_statistics(model, BRIGHT_DARK_SPACE, images, targets, hrank_images=0)

    with pytest.raises(UserError, match="need a torchvision box detector, got BrightDarkBackbone"):
        statistics([image], [target], model=BrightDarkBackbone())
    with pytest.raises(UserError, match="1 targets for 2 images"):
        statistics([image, image], [target])
    no_objects = [{"boxes": torch.zeros(0, 4)}, {"boxes": [[0.0, 0.0, 8.0, 8.0]], "iscrowd": [1]}]
    with pytest.raises(UserError, match="none of the 2 calibration images has an object box"):
        statistics([image, image], no_objects)
    whole = {"boxes": [[0.0, 0.0, float(SIDE), float(SIDE)]]}
    with pytest.raises(UserError, match="cover every pixel; box relevance needs background"):
        statistics([image], [whole])
    with pytest.raises(UserError, match=r"images\[1\] must be a float \(3, H, W\) tensor"):
        statistics([image, image.to(torch.uint8)], [target, target])
    with pytest.raises(UserError, match=r"targets\[0\]\['boxes'\] must be \(N, 4\)"):
        statistics([image], [{"boxes": [1.0, 2.0, 3.0]}])
    with pytest.raises(UserError, match=r"targets\[0\]\['iscrowd'\] has 2 entries for 1 boxes"):
        statistics([image], [{**target, "iscrowd": [0, 0]}])
    with pytest.raises(UserError, match="num_images must be an integer >= 1, got 0"):
        detection_statistics(detector, BRIGHT_DARK_SPACE, [image], [target], num_images=0)
