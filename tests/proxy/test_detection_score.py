"""The detection proxy score: mAP against hand-computed COCO-style APs, the no-learning loss, the score."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from torch import nn

from acp.errors import UserError
from acp.proxy.detection_score import (
    coco_backend,
    detection_loss,
    mean_average_precision,
    require_map_packages,
    score_detector,
)

pytest.importorskip("torchmetrics.detection")


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def target(rows, labels, crowd=None) -> dict[str, torch.Tensor]:
    result = {"boxes": boxes(*rows), "labels": torch.tensor(labels, dtype=torch.int64)}
    if crowd is not None:
        result["iscrowd"] = torch.tensor(crowd, dtype=torch.int64)
    return result


def prediction(rows, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": boxes(*rows),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def no_boxes_prediction() -> dict[str, torch.Tensor]:
    return prediction([], [], [])


# One class. Image A has 2 ground-truth boxes, image B one; four predictions with distinct scores.
A1, A2, B1 = (0, 0, 10, 10), (20, 20, 30, 30), (0, 0, 10, 10)
FAR_A, FAR_B = (40, 40, 50, 50), (50, 50, 60, 60)  # overlap nothing: false positives
TWO_IMAGE_TARGETS = [target([A1, A2], [1, 1]), target([B1], [1])]
TWO_IMAGE_PREDICTIONS = [
    prediction([A1, FAR_A], [0.9, 0.6], [1, 1]),  # 0.9 hits A1 (TP); 0.6 is a FP
    prediction([FAR_B, B1], [0.8, 0.7], [1, 1]),  # 0.8 is a FP; 0.7 hits B1 (TP)
]
# By score: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP; 3 ground-truth boxes.
#   precision = 1/1, 1/2, 2/3, 2/4      recall = 1/3, 1/3, 2/3, 2/3
#   envelope (max precision at this or higher recall) = 1, 2/3, 2/3, 1/2
# COCO's 101 recall points r = 0, 0.01, ..., 1 take the envelope at the first rank with recall >= r:
#   r = 0.00 .. 0.33 (34 points): rank 1 -> 1
#   r = 0.34 .. 0.66 (33 points): rank 3 -> 2/3
#   r = 0.67 .. 1.00 (34 points): recall never gets there -> 0
#   AP = (34 * 1 + 33 * 2/3 + 34 * 0) / 101 = 56 / 101
ONE_CLASS_AP = (34 * 1 + 33 * 2 / 3) / 101


def test_one_class_map50_is_the_hand_computed_101_point_ap():
    value = mean_average_precision(TWO_IMAGE_PREDICTIONS, TWO_IMAGE_TARGETS, metric="map50")
    assert isinstance(value, float)
    assert value == pytest.approx(56 / 101, abs=1e-6)
    assert value == pytest.approx(ONE_CLASS_AP, abs=1e-6)


def test_map_logs_nothing_at_info_and_leaves_the_coco_loggers_level(caplog):
    logger = logging.getLogger("faster_coco_eval")
    before = logger.level
    with caplog.at_level(logging.INFO):
        for metric in ("map50", "map"):
            mean_average_precision(TWO_IMAGE_PREDICTIONS, TWO_IMAGE_TARGETS, metric=metric)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("faster_coco_eval")] == []
    assert logger.level == before


def test_two_classes_average_their_aps():
    # Class 2: one ground-truth box in image A; a FP in image B scored 0.95, then a TP in A scored 0.5.
    #   precision = 0/1, 1/2      recall = 0, 1      envelope = 1/2, 1/2
    #   every one of the 101 recall points takes 1/2 -> AP = 0.5
    class_two_box = (60, 60, 80, 80)
    targets = [target([A1, A2, class_two_box], [1, 1, 2]), target([B1], [1])]
    predictions = [
        prediction([A1, FAR_A, class_two_box], [0.9, 0.6, 0.5], [1, 1, 2]),
        prediction([FAR_B, B1, (0, 0, 5, 5)], [0.8, 0.7, 0.95], [1, 1, 2]),
    ]
    expected = (56 / 101 + 0.5) / 2
    assert mean_average_precision(predictions, targets, metric="map50") == pytest.approx(expected, abs=1e-6)


def test_exact_boxes_score_one_on_every_threshold():
    predictions = [prediction([A1, A2], [0.9, 0.8], [1, 2]), prediction([B1], [0.7], [1])]
    targets = [target([A1, A2], [1, 2]), target([B1], [1])]
    assert mean_average_precision(predictions, targets, metric="map") == pytest.approx(1.0, abs=1e-6)
    assert mean_average_precision(predictions, targets, metric="map50") == pytest.approx(1.0, abs=1e-6)


def test_map_counts_the_thresholds_an_overlap_passes():
    # IoU of (0, 0, 10, 6.2) with (0, 0, 10, 10) = 62 / 100 = 0.62: a hit at IoU 0.5, 0.55 and 0.6, a miss
    # (AP 0) at 0.65 .. 0.95 -> map = 3 / 10; map50 = 1.
    predictions = [prediction([(0, 0, 10, 6.2)], [0.9], [1]), prediction([(20, 20, 30, 26.2)], [0.8], [1])]
    targets = [target([(0, 0, 10, 10)], [1]), target([(20, 20, 30, 30)], [1])]
    assert mean_average_precision(predictions, targets, metric="map50") == pytest.approx(1.0, abs=1e-6)
    assert mean_average_precision(predictions, targets, metric="map") == pytest.approx(0.3, abs=1e-6)


def test_crowd_boxes_are_neither_hits_nor_misses_and_no_detections_score_zero():
    targets = [target([A1, A2], [1, 1], crowd=[0, 1])]
    assert mean_average_precision([prediction([A1], [0.9], [1])], targets, metric="map50") == pytest.approx(
        1.0
    )
    assert mean_average_precision([no_boxes_prediction()], targets, metric="map50") == 0.0


def test_images_without_ground_truth_are_a_user_error_not_nan():
    empty = [target([], []), target([A1], [1], crowd=[1])]
    with pytest.raises(UserError, match="ground-truth box"):
        mean_average_precision([prediction([A1], [0.9], [1]), no_boxes_prediction()], empty, metric="map")


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics.detection", None)
    with pytest.raises(UserError, match=r"acp\[detection\]"):
        mean_average_precision(TWO_IMAGE_PREDICTIONS, TWO_IMAGE_TARGETS, metric="map50")
    monkeypatch.undo()
    assert coco_backend() in ("faster_coco_eval", "pycocotools")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UserError, match=r"acp\[detection\]") as raised:
        mean_average_precision(TWO_IMAGE_PREDICTIONS, TWO_IMAGE_TARGETS, metric="map50")
    assert "\n" not in str(raised.value)


def test_the_up_front_package_check_names_its_caller_and_the_extra(monkeypatch):
    require_map_packages("acp demo --task detection")  # installed here: nothing raised
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UserError, match=r"^acp demo --task detection: .*acp\[detection\]") as raised:
        require_map_packages("acp demo --task detection")
    assert "\n" not in str(raised.value)
    monkeypatch.undo()
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    with pytest.raises(UserError, match=r"^bench: the mAP score needs torchmetrics"):
        require_map_packages("bench")


def tiny_ssd(seed: int = 0) -> nn.Module:
    """A torchvision SSD on a two-conv backbone (with BatchNorm), 64 x 64 input, 2 object classes."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )
    anchors = DefaultBoxGenerator([[2]])
    head = SSDHead([16], anchors.num_anchors_per_location(), num_classes=3)
    return SSD(backbone, anchors, (64, 64), num_classes=3, head=head)


def tiny_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 48, 56, generator=generator) for _ in range(2)]
    targets = [target([(4, 6, 30, 40)], [1]), target([(10, 2, 50, 44)], [2])]
    return images, targets


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: value.clone()
        for name, value in model.state_dict().items()
        if "running" in name or "tracked" in name
    }


def test_detection_loss_is_the_summed_loss_dict_and_moves_no_statistics():
    model = tiny_ssd()
    images, targets = tiny_batch()
    before = batchnorm_state(model)
    model.eval()
    loss = detection_loss(model, images, targets)
    assert model.training is False and not any(module.training for module in model.modules())
    for name, value in batchnorm_state(model).items():
        assert torch.equal(value, before[name]), name

    model.train()
    model.backbone[1].eval()  # a mixed mode survives too
    assert detection_loss(model, images, targets) == loss
    assert model.training and model.backbone.training and not model.backbone[1].training
    assert model.backbone[4].training

    # by hand: training mode for the loss dictionary, BatchNorm on its running statistics
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        losses = model(images, [dict(t) for t in targets])
    assert set(losses) == {"bbox_regression", "classification"}
    assert loss == pytest.approx(sum(float(value) for value in losses.values()), rel=1e-6)
    for name, value in batchnorm_state(model).items():
        assert torch.equal(value, before[name]), name


def test_detection_loss_leaves_out_crowd_boxes():
    model = tiny_ssd()
    images, targets = tiny_batch()
    crowded = [
        target([(4, 6, 30, 40), (0, 0, 20, 20)], [1, 2], crowd=[0, 1]),
        target([(10, 2, 50, 44)], [2], crowd=[0]),
    ]
    assert detection_loss(model, images, crowded) == pytest.approx(detection_loss(model, images, targets))


def test_two_stage_loss_is_repeatable_and_keeps_the_global_generator():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    backbone.out_channels = 8
    model = FasterRCNN(
        backbone,
        num_classes=3,
        min_size=64,
        max_size=64,
        rpn_anchor_generator=AnchorGenerator(sizes=((16, 32),), aspect_ratios=((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=3, sampling_ratio=1),
        representation_size=32,
    )
    images, targets = tiny_batch()
    state = torch.random.get_rng_state()
    first = detection_loss(model, images, targets)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(12345)  # the samplers' draws come from detection_loss's own seed, not the global state
    assert detection_loss(model, images, targets) == first
    assert detection_loss(model, images, targets, seed=1) != first
    assert torch.isfinite(torch.tensor(first))


def test_loss_score_is_the_negated_image_weighted_mean_loss():
    model = tiny_ssd()
    images, targets = tiny_batch()
    loss = detection_loss(model, images, targets)
    assert score_detector(model, [(images, targets)], metric="loss") == pytest.approx(-loss)
    single = detection_loss(model, images[:1], targets[:1])
    two_batches = [(images, targets), (images[:1], targets[:1])]
    expected = -(2 * loss + single) / 3
    assert score_detector(model, two_batches, metric="loss") == pytest.approx(expected)


class FixedDetector(nn.Module):
    """Returns the given predictions, one batch per call, and records how it was called."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)
        self.norm = nn.BatchNorm2d(1)
        self.calls = []

    def forward(self, images):
        self.calls.append((self.training, self.norm.training, torch.is_inference_mode_enabled(), len(images)))
        return self.outputs.pop(0)


def test_map_score_runs_the_model_in_eval_inference_mode_over_every_batch():
    model = FixedDetector([TWO_IMAGE_PREDICTIONS[:1], TWO_IMAGE_PREDICTIONS[1:]])
    model.train()
    image = torch.zeros(3, 8, 8)
    batches = [([image], TWO_IMAGE_TARGETS[:1]), ([image], TWO_IMAGE_TARGETS[1:])]
    assert score_detector(model, batches, metric="map50") == pytest.approx(56 / 101, abs=1e-6)
    assert model.calls == [(False, False, True, 1)] * 2
    assert model.training and model.norm.training


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(ValueError, match="map50, map, loss"):
        score_detector(tiny_ssd(), [], metric="accuracy")
    with pytest.raises(UserError, match="map50, map"):
        mean_average_precision(TWO_IMAGE_PREDICTIONS, TWO_IMAGE_TARGETS, metric="loss")
    with pytest.raises(UserError, match="no images"):
        score_detector(tiny_ssd(), [], metric="loss")
