"""Feature statistics of a torchvision detector on calibration images, with object-box masks.

:func:`detection_statistics` returns the :class:`~acp.propose.features.FeatureStatistics` that
:func:`~acp.propose.features.collect_statistics` returns for a classifier -- it *is* that function,
run on the detector's network view (:func:`acp.models.detection.traced_network`, the module the channel
space is built on) -- plus the per-channel inside/outside-object responses (``foreground_share``) the
``box_relevance`` and ``task`` criteria score. Only the inputs are detection-specific:

1. the detector's own ``transform``, in eval mode, normalizes and resizes each batch of images exactly as
   the detector's ``forward`` does at test time (SSD: to its ``fixed_size``; the R-CNN family: to
   ``min_size``, then zero-padded to a multiple of ``size_divisible``), and rescales each image's boxes
   with it;
2. a **box mask** per image at the transformed tensor's resolution: a pixel is 1 when its centre lies in
   any non-crowd box (``iscrowd`` 0 or absent), 0 elsewhere. A box thinner than a pixel between two pixel
   centres still marks the pixel holding its centre, so no box is lost.

**Padding counts as background** (0), not excluded: the network does run on it, its channels respond to
it as to any other non-object input, and :func:`collect_statistics` takes binary masks (object or not).
SSD's fixed-size transform pads nothing; for the R-CNN family padding is the strip that makes each side
a multiple of ``size_divisible`` (32) within a batch, small next to the image.

Deterministic: the transform has no randomness in eval mode, and the statistics are
:func:`collect_statistics`' (same images, batch size and thread count -> same numbers). The detector's
modules keep their train/eval modes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acp.errors import UserError
from acp.models.detection import is_detector, traced_network
from acp.propose.features import (
    DEFAULT_HRANK_IMAGES,
    DEFAULT_NUM_IMAGES,
    DEFAULT_POOL_SIZE,
    FeatureStatistics,
    _validate_settings,
    collect_statistics,
)

Target = Mapping[str, Any]
# A detector runs on images of 300-800 pixels: a smaller batch than a classifier's 64 bounds the memory.
DEFAULT_DETECTION_BATCH_SIZE = 8


def detection_statistics(
    detector: nn.Module,
    space: Any,
    images: Sequence[torch.Tensor],
    targets: Sequence[Target],
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    batch_size: int = DEFAULT_DETECTION_BATCH_SIZE,
    pool_size: int = DEFAULT_POOL_SIZE,
    hrank_images: int = DEFAULT_HRANK_IMAGES,
    descriptor: str = "bn",
) -> FeatureStatistics:
    """Statistics of every group of ``space`` on the first ``num_images`` of ``images``, with box masks.

    ``images``: float32 ``(3, H, W)`` tensors in ``[0, 1]`` of any size, as a torchvision detector takes
    them; ``targets``: one mapping per image with ``"boxes"`` (``(N, 4)`` ``x1, y1, x2, y2`` in pixel
    edges of that image) and optionally ``"iscrowd"`` (``(N,)``, nonzero = not an object to find; left
    out of the masks). ``space`` is the ChannelSpace built on the detector's network view. The other
    arguments are :func:`collect_statistics`'.
    """
    if not is_detector(detector):
        raise UserError(
            f"detection statistics need a torchvision box detector, got {type(detector).__name__}; for a "
            "classifier use acp.propose.features.collect_statistics"
        )
    _validate_settings(num_images, batch_size, pool_size, hrank_images)
    images, targets = _checked_inputs(images, targets)
    images, targets = images[:num_images], targets[:num_images]
    boxes = [_object_boxes(target) for target in targets]
    if sum(len(image_boxes) for image_boxes in boxes) == 0:
        raise UserError(
            f"detection statistics: none of the {len(images)} calibration images has an object box (crowd "
            "boxes aside); box relevance compares responses inside boxes with the background, so at least "
            "one image needs a box"
        )
    network = traced_network(detector)
    modes = {module: module.training for module in detector.modules()}
    areas = _MaskAreas()
    try:
        detector.eval()
        statistics = collect_statistics(
            network,
            space,
            _masked_batches(detector.transform, images, boxes, batch_size, areas),
            num_images=len(images),
            batch_size=batch_size,
            pool_size=pool_size,
            hrank_images=hrank_images,
            descriptor=descriptor,
        )
    finally:
        for module, training in modes.items():
            module.training = training
    if areas.inside == 0:
        raise UserError(
            f"detection statistics: the boxes of the {len(images)} calibration images cover no pixel of the "
            "transformed images (boxes outside their images?); box relevance is undefined"
        )
    if areas.outside == 0:
        raise UserError(
            f"detection statistics: the boxes of the {len(images)} calibration images cover every pixel; "
            "box relevance needs background to compare with"
        )
    return statistics


def transform_with_box_masks(
    transform: nn.Module, images: Sequence[torch.Tensor], targets: Sequence[Target]
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`detection_statistics` hands the network for one batch: the batch tensor ``(B, 3, H,
    W)`` a detector's ``transform`` makes of ``images`` (run in eval mode here) and bool box masks ``(B,
    H, W)`` at its resolution, True on non-crowd boxes, False elsewhere (padding included)."""
    images, targets = _checked_inputs(images, targets)
    training = transform.training
    transform.eval()
    try:
        return _transform_batch(transform, images, [_object_boxes(target) for target in targets])
    finally:
        transform.train(training)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool ``(height, width)``: True on the pixels whose centre lies in any of ``boxes`` (``(N, 4)``
    ``x1, y1, x2, y2`` in pixel edges: pixel ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        columns, rows = _pixel_span(x1, x2, width), _pixel_span(y1, y2, height)
        if columns is not None and rows is not None:
            mask[rows[0] : rows[1], columns[0] : columns[1]] = True
    return mask


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int] | None:
    """[start, stop) of the pixels whose centre ``i + 0.5`` lies in ``[low, high)``, clipped to the image."""
    start, stop = math.ceil(low - 0.5), math.ceil(high - 0.5)
    if stop <= start:  # thinner than a pixel, between two centres: the pixel holding the box's centre
        start = math.floor((low + high) / 2.0)
        stop = start + 1
    start, stop = max(start, 0), min(stop, size)
    return (start, stop) if stop > start else None


@dataclass
class _MaskAreas:
    """Pixels counted inside / outside the boxes over every mask handed to the statistics."""

    inside: int = 0
    outside: int = 0


def _masked_batches(
    transform: nn.Module,
    images: list[torch.Tensor],
    boxes: list[torch.Tensor],
    batch_size: int,
    areas: _MaskAreas,
) -> Iterator[tuple[torch.Tensor, None, torch.Tensor]]:
    """``(tensor, None, masks)`` batches for :func:`collect_statistics`, transformed one batch at a time
    so only one batch of transformed images is held."""
    for start in range(0, len(images), batch_size):
        tensor, masks = _transform_batch(
            transform, images[start : start + batch_size], boxes[start : start + batch_size]
        )
        inside = int(masks.sum())
        areas.inside += inside
        areas.outside += masks.numel() - inside
        yield tensor, None, masks


def _transform_batch(
    transform: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch tensor the detector's network sees and its box masks ``(B, H, W)`` (padding: False)."""
    with torch.no_grad():
        image_list, resized = transform(images, [{"boxes": image_boxes} for image_boxes in boxes])
    tensor = image_list.tensors
    height, width = tensor.shape[-2:]
    masks = torch.zeros(len(images), height, width, dtype=torch.bool)
    for index, ((image_height, image_width), target) in enumerate(zip(image_list.image_sizes, resized)):
        masks[index, :image_height, :image_width] = box_mask(target["boxes"], image_height, image_width)
    return tensor, masks


def _object_boxes(target: Target) -> torch.Tensor:
    """float32 ``(N, 4)`` boxes of the objects to find (crowd ones left out)."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    crowd = target.get("iscrowd")
    if crowd is not None:
        boxes = boxes[torch.as_tensor(crowd).reshape(-1) == 0]
    return boxes


def _checked_inputs(images, targets) -> tuple[list[torch.Tensor], list[Target]]:
    for name, value in (("images", images), ("targets", targets)):
        if isinstance(value, torch.Tensor | str | Mapping) or not isinstance(value, Sequence):
            raise UserError(
                f"detection statistics: {name} must be a list, one entry per image, got "
                f"{type(value).__name__}"
            )
    if len(images) != len(targets):
        raise UserError(f"detection statistics: {len(targets)} targets for {len(images)} images")
    if not images:
        raise UserError("detection statistics: no calibration images were given")
    for index, (image, target) in enumerate(zip(images, targets)):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UserError(
                f"detection statistics: images[{index}] must be a float (3, H, W) tensor in [0, 1], got {got}"
            )
        _check_target(index, target)
    return list(images), list(targets)


def _check_target(index: int, target: object) -> None:
    if not isinstance(target, Mapping) or "boxes" not in target:
        raise UserError(f"detection statistics: targets[{index}] must be a mapping with 'boxes'")
    try:
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"detection statistics: targets[{index}]['boxes'] is not numeric") from None
    if not (boxes.numel() == 0 or (boxes.dim() == 2 and boxes.shape[1] == 4)):
        raise UserError(
            f"detection statistics: targets[{index}]['boxes'] must be (N, 4) x1, y1, x2, y2, got shape "
            f"{tuple(boxes.shape)}"
        )
    if not torch.isfinite(boxes).all():
        raise UserError(f"detection statistics: targets[{index}]['boxes'] holds a non-finite coordinate")
    crowd = target.get("iscrowd")
    if crowd is not None:
        count = torch.as_tensor(crowd).numel()
        expected = boxes.numel() // 4
        if count != expected:
            raise UserError(
                f"detection statistics: targets[{index}]['iscrowd'] has {count} entries for {expected} boxes"
            )
