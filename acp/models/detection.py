"""torchvision's box detectors, and the one place that says which part of a detector acp traces.

A torchvision detector's ``forward`` takes a list of images of any size and returns boxes: it normalizes
and resizes them (``GeneralizedRCNNTransform``), runs the network, then decodes boxes against anchors and
runs NMS. Only the network has channels to prune, and only its cost depends on the widths. acp therefore
traces, counts and prunes the **network view** (:func:`traced_network`): the detector's own parameterised
submodules, under the detector's own attribute names, run on one batch tensor of the size the transform
produces:

- SSD, SSDlite, RetinaNet, FCOS: ``head(list(backbone(x).values()))`` -- backbone (with the FPN or the SSD
  extras) and the whole head, exactly what the detector runs between its transform and its box decoding;
- Faster R-CNN: ``backbone``, ``rpn.head`` on every level, then ``roi_heads.box_roi_pool`` ->
  ``box_head`` -> ``box_predictor`` on a fixed set of boxes: as many per image as the RPN keeps at test
  time (``rpn.post_nms_top_n()`` in eval mode), the most the box head ever runs on. The proposals
  themselves (anchors, decoding, NMS) are not part of the network, so the box head's cost is counted at
  that maximum.

Because the view holds the detector's modules under the detector's names (``backbone.body.0.0``,
``head.classification_head.module_list.0``, ...), a channel space built on the view slices the detector
itself: ``materialize`` prunes the full detector, whose ``forward`` still takes images and returns boxes.
The layers that produce the view's outputs -- the class and box predictors, whose output channels are
anchors x classes and anchors x 4 -- are the model outputs and are never pruned (as a classifier's last
layer). Anything else (the transform, the anchor generator, the post-processing) holds no parameters.

Sizes: the network sees what the transform makes of an image; for the square image of the transform's own
size (``min_size``; SSD's ``fixed_size``) that is :func:`network_input_size`. ``[model].input_size`` of a
detector is that size (default: the square case); the MACs are counted at it.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from acp.errors import UserError

# The torchvision detectors whose network view acp knows (name -> the family of its class). Mask and
# keypoint R-CNN run more heads on the proposals; they are not covered yet.
DETECTORS = {
    "ssd300_vgg16": "SSD",
    "ssdlite320_mobilenet_v3_large": "SSD",
    "retinanet_resnet50_fpn": "RetinaNet",
    "retinanet_resnet50_fpn_v2": "RetinaNet",
    "fcos_resnet50_fpn": "FCOS",
    "fasterrcnn_resnet50_fpn": "FasterRCNN",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN",
}
UNSUPPORTED = {
    "maskrcnn_resnet50_fpn": "its mask head",
    "maskrcnn_resnet50_fpn_v2": "its mask head",
    "keypointrcnn_resnet50_fpn": "its keypoint head",
}


def detector_names() -> list[str]:
    return sorted(DETECTORS)


def create_detector(name: str, kwargs: dict) -> nn.Module:
    """A torchvision detector with fresh random weights: neither the detector's nor the backbone's
    pretrained weights are downloaded (torchvision's default for ``weights_backbone`` would)."""
    import torchvision.models

    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            raise UserError(f"model {name!r}: acp never downloads weights; pass {key}=None")
    kwargs = {**kwargs, "weights": None, "weights_backbone": None}
    try:
        return torchvision.models.get_model(name, **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"model {name!r}: bad arguments {sorted(kwargs)}: {error}") from None


def unsupported_detector(name: str) -> UserError | None:
    if name not in UNSUPPORTED:
        return None
    return UserError(
        f"model {name!r}: acp cannot prune torchvision's {name} yet ({UNSUPPORTED[name]} is not traced); "
        f"box detectors acp prunes: {', '.join(detector_names())}"
    )


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is (a subclass of) a torchvision box detector acp has a network view for."""
    return _family(model) is not None


def _family(model: nn.Module) -> str | None:
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, (MaskRCNN, KeypointRCNN)):
        raise UserError(
            f"{type(model).__name__}: acp cannot prune mask or keypoint R-CNN yet (their extra heads are not "
            "traced)"
        )
    for family, kind in (("SSD", SSD), ("RetinaNet", RetinaNet), ("FCOS", FCOS), ("FasterRCNN", FasterRCNN)):
        if isinstance(model, kind):
            return family
    return None


class DenseDetectorNetwork(nn.Module):
    """SSD / SSDlite / RetinaNet / FCOS: backbone and head on a batch tensor.

    Returns the predictors' maps per level, (N, anchors x K, H, W), before the head flattens and
    concatenates them into (N, H x W x anchors, K): that reshape holds no parameters and costs nothing
    countable, and Torch-Pruning would take its concatenation along dim 1 for a channel concat.
    """

    def __init__(self, detector: nn.Module, family: str):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head
        self.family = family

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        if isinstance(features, torch.Tensor):  # as the detectors do for a single-map backbone
            features = {"0": features}
        return tuple(head_maps(self.family, self.head, list(features.values())))


def head_maps(family: str, head: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The per-level predictor outputs of a one-stage detector's head: the same layers on the same
    inputs as the head's own forward, in the order classification, regression (, centerness)."""
    if family == "SSD":
        return [
            scoring.module_list[level](feature)
            for scoring in (head.classification_head, head.regression_head)
            for level, feature in enumerate(features)
        ]
    classification, regression = head.classification_head, head.regression_head
    maps = [classification.cls_logits(classification.conv(feature)) for feature in features]
    if family == "RetinaNet":
        return maps + [regression.bbox_reg(regression.conv(feature)) for feature in features]
    box_features = [regression.conv(feature) for feature in features]  # FCOS: two predictors share it
    maps += [nn.functional.relu(regression.bbox_reg(feature)) for feature in box_features]
    return maps + [regression.bbox_ctrness(feature) for feature in box_features]


class TwoStageNetwork(nn.Module):
    """Faster R-CNN: backbone, RPN head on every level, box head and predictor on a fixed set of boxes."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.rpn = _Holder(head=detector.rpn.head)
        self.roi_heads = _Holder(
            box_roi_pool=detector.roi_heads.box_roi_pool,
            box_head=detector.roi_heads.box_head,
            box_predictor=detector.roi_heads.box_predictor,
        )
        self.boxes_per_image = boxes_per_image(detector)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        objectness, box_deltas = self.rpn.head(list(features.values()))
        height, width = images.shape[-2:]
        # every box the whole image: the box head's cost does not depend on where the boxes are
        whole = images.new_tensor([[0.0, 0.0, float(width), float(height)]])
        proposals = [whole.expand(self.boxes_per_image, 4)] * images.shape[0]
        pooled = self.roi_heads.box_roi_pool(features, proposals, [(height, width)] * images.shape[0])
        class_logits, box_regression = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        return (*objectness, *box_deltas, class_logits, box_regression)


class _Holder(nn.Module):
    """A container that gives shared submodules the names they have in the detector (``rpn.head``)."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


def boxes_per_image(detector: nn.Module) -> int:
    """How many proposals per image Faster R-CNN's RPN keeps in eval mode (the box head's batch)."""
    return int(detector.rpn._post_nms_top_n["testing"])


def traced_network(model: nn.Module) -> nn.Module:
    """The module acp traces, counts and slices for ``model``: the network view of a torchvision detector
    (sharing its modules and names, see the module docstring), any other model itself."""
    family = _family(model)
    if family is None:
        return model
    return TwoStageNetwork(model) if family == "FasterRCNN" else DenseDetectorNetwork(model, family)


def network_input_size(detector: nn.Module) -> tuple[int, int, int]:
    """(3, height, width) of the tensor the detector's transform makes of a square image of its own size
    (SSD: ``fixed_size``; the R-CNN family: ``min_size``, then padded to ``size_divisible``)."""
    transform = detector.transform
    side = transform.fixed_size or (transform.min_size[-1],) * 2
    was_training = transform.training
    transform.eval()
    try:
        with torch.no_grad():
            images, _ = transform([torch.zeros(3, int(side[0]), int(side[1]))])
    finally:
        transform.train(was_training)
    return tuple(int(d) for d in images.tensors.shape[1:])


@lru_cache(maxsize=32)
def _registry_input_size(name: str, frozen_kwargs: tuple) -> tuple[int, int, int]:
    return network_input_size(create_detector(name, dict(frozen_kwargs)))


def detector_input_size(name: str, kwargs: dict | None = None) -> tuple[int, int, int]:
    """:func:`network_input_size` of a registry detector built with ``kwargs`` (built once per arguments)."""
    try:
        frozen = tuple(sorted((kwargs or {}).items()))
        hash(frozen)
    except TypeError:  # unhashable arguments: build without the cache
        return network_input_size(create_detector(name, dict(kwargs or {})))
    return _registry_input_size(name, frozen)


def describe_network(model: nn.Module, input_size) -> str | None:
    """One line for ``acp info``: what the MACs of a detector cover and at which size; None otherwise."""
    family = _family(model)
    if family is None:
        return None
    size = "x".join(map(str, input_size))
    sees = network_input_size(model)
    seen = "x".join(map(str, sees))
    what = (
        f"backbone + rpn.head + box head on {boxes_per_image(model)} boxes per image, the RPN's test-time "
        "maximum"
        if family == "FasterRCNN"
        else "backbone + head"
    )
    transform = type(model.transform).__name__
    if tuple(sees) == tuple(input_size):
        where = f"what its {transform} hands the network for a square image"
    else:
        where = f"[model].input_size; its {transform} hands the network {seen} for a square image"
    return (
        f"detector {type(model).__name__}: MACs/params of its network ({what}) on a {size} tensor ({where}); "
        "the resize/normalize, anchors, box decoding and NMS are not counted"
    )
