"""Scores of a torchvision box detector for the proxy: mAP on held-out images, or its training loss.

The proxy evaluator scores each pruned candidate on held-out *training* images (the proxy-validation
slice of the training split; the test split is never touched by search), so these figures rank
candidates against each other and are not the detector's reported accuracy. Every score is higher-is-better:

- ``"map50"``: mean average precision at IoU 0.5 over the object classes -- Pascal VOC's figure, but
  computed COCO's way: **mAP@0.5 with COCO's 101-point interpolation** (the precision envelope sampled at
  recall 0, 0.01, ..., 1), not VOC2007's 11-point nor VOC2010's all-point area;
- ``"map"``: COCO's mAP@[.5:.95], the mean of that AP over the ten IoU thresholds 0.5, 0.55, ..., 0.95;
- ``"loss"``: minus the detector's own training loss (the sum of its loss dictionary), see
  :func:`detection_loss`.

Both mAPs come from torchmetrics' ``MeanAveragePrecision`` (COCO's evaluation protocol: at most 100
detections per image, the highest-scoring ones; a ground-truth box with ``iscrowd`` = 1 -- difficult or
crowd objects, :meth:`acp.detection_data.DetectionData.target` with ``with_ignored=True`` -- is neither
a hit nor a miss; a class with no ground truth among the images is left out of the mean, so its false
positives cost nothing). torchmetrics needs a COCO-eval backend: ``faster_coco_eval`` when importable (the
same numbers as pycocotools, several times faster), else ``pycocotools``. Both come with
``pip install 'acp[detection]'``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from acp.errors import UserError

METRICS = ("map50", "map", "loss")
MAP_METRICS = ("map50", "map")
BACKENDS = ("faster_coco_eval", "pycocotools")  # in order of preference
MISSING_PACKAGES = (
    "the mAP score needs torchmetrics and faster-coco-eval (or pycocotools); install them: "
    "pip install 'acp[detection]'"
)

Target = dict[str, torch.Tensor]
Batch = tuple[Sequence[torch.Tensor], Sequence[Target]]


def check_metric(metric: object) -> str:
    """``metric`` itself when it is one of :data:`METRICS`, else a UserError naming the allowed ones."""
    if metric not in METRICS:
        raise UserError(f"detection score metric must be one of {', '.join(METRICS)}; got {metric!r}")
    return metric


def coco_backend() -> str:
    """The COCO-eval package torchmetrics will use: the first of :data:`BACKENDS` that imports (fixed
    import statements: nothing is imported by a computed name)."""
    try:
        import faster_coco_eval  # noqa: F401

        return "faster_coco_eval"
    except ImportError:
        pass
    try:
        import pycocotools  # noqa: F401

        return "pycocotools"
    except ImportError:
        raise UserError(MISSING_PACKAGES) from None


def require_map_packages(purpose: str) -> None:
    """UserError, prefixed by ``purpose`` (e.g. ``"acp demo --task detection"``), unless torchmetrics and a
    COCO-eval backend are installed: checked before anything is trained."""
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:
        raise UserError(f"{purpose}: {MISSING_PACKAGES}")
    try:
        coco_backend()
    except UserError as error:
        raise UserError(f"{purpose}: {error}") from None


def _mean_average_precision_class():
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise UserError(MISSING_PACKAGES) from None
    return MeanAveragePrecision


def countable_boxes(target: Target) -> int:
    """Ground-truth boxes of one image that a detector is scored on (those not marked ``iscrowd``)."""
    crowd = target.get("iscrowd")
    if crowd is None:
        return len(target["boxes"])
    return int((crowd == 0).sum())


def mean_average_precision(predictions: Sequence[Target], targets: Sequence[Target], *, metric: str) -> float:
    """``"map50"`` or ``"map"`` (module docstring) of ``predictions`` against ``targets``, one dict per image.

    Predictions hold ``boxes`` (N, 4) float ``x1, y1, x2, y2``, ``scores`` (N,) and ``labels`` (N,) int64;
    targets ``boxes`` and ``labels``, optionally ``iscrowd`` (1 = ignored). Images with no predictions count
    (their objects are misses), so a detector that finds nothing scores 0.0. UserError when no image has a
    ground-truth box to find (the mAP is undefined) or the packages are missing.
    """
    if metric not in MAP_METRICS:
        raise UserError(f"mAP metric must be one of {', '.join(MAP_METRICS)}; got {metric!r}")
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets: one of each per image")
    if not any(countable_boxes(target) for target in targets):
        raise UserError(
            f"cannot compute {metric}: none of the {len(targets)} images has a ground-truth box "
            "(not marked iscrowd) to find; score on images with objects"
        )
    mean_ap = _mean_average_precision_class()
    backend = coco_backend()
    # map50 needs only the 0.5 threshold (ten times less matching); "map" is then its AP at that threshold
    thresholds = [0.5] if metric == "map50" else None
    calculator = mean_ap(box_format="xyxy", iou_type="bbox", iou_thresholds=thresholds, backend=backend)
    # torchvision detectors return up to 200-300 boxes per image; COCO's protocol keeps the 100 best and
    # torchmetrics would warn about it on every update
    calculator.warn_on_many_detections = False
    calculator.update(
        [{key: prediction[key] for key in ("boxes", "scores", "labels")} for prediction in predictions],
        [
            {key: value for key, value in target.items() if key in ("boxes", "labels", "iscrowd")}
            for target in targets
        ],
    )
    with quiet_coco_eval():
        value = float(calculator.compute()["map"])
    if not math.isfinite(value) or value < 0:  # -1 is COCO's "undefined", excluded above
        raise UserError(f"{metric} is undefined for these images (torchmetrics returned {value})")
    return value


@contextlib.contextmanager
def quiet_coco_eval() -> Iterator[None]:
    """faster-coco-eval logs its whole COCO summary table at INFO on every mAP (hundreds of lines over a
    search or a demo, on stderr); acp reports its own figures. The logger's level is restored afterwards."""
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """The detector in training mode (so its forward returns the loss dictionary) with every layer whose
    training behaviour is state or noise kept in eval mode: BatchNorm (running statistics must not
    move), dropout, and the input transform (train mode may pick a random ``min_size`` or skip
    resizing). Every module's mode is restored afterwards."""
    with modes_restored(model):
        model.train()
        frozen = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
        for module in model.modules():
            if isinstance(module, frozen):
                module.eval()
        transform = getattr(model, "transform", None)
        if isinstance(transform, nn.Module):
            transform.eval()
        yield


@contextlib.contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Every module's train/eval flag as it was on entry, restored on exit (a mixed mode included)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def detection_loss(
    model: nn.Module, images: Sequence[torch.Tensor], targets: Sequence[Target], *, seed: int = 0
) -> float:
    """The sum of a torchvision detector's training loss dictionary on one batch, without learning.

    Computed under ``torch.no_grad()`` in :func:`loss_mode` (BatchNorm statistics unchanged, the model's
    modes restored). Boxes marked ``iscrowd`` are dropped from the targets first (torchvision's references
    train without them). The R-CNN family samples anchors and proposals with torch's global generator: it
    runs on a generator seeded with ``seed`` and the global state is restored, so the same model and batch
    give the same loss.
    """
    targets = [_without_crowd(target) for target in targets]
    with loss_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        losses = model(list(images), targets)
    if not isinstance(losses, dict) or not losses:
        raise UserError(
            f"{type(model).__name__} in training mode returned {type(losses).__name__}, not a torchvision "
            "detector's loss dictionary"
        )
    return float(sum(loss.detach().float().sum() for loss in losses.values()))


def _without_crowd(target: Target) -> Target:
    crowd = target.get("iscrowd")
    if crowd is None:
        return target
    keep = crowd == 0
    return {
        key: value[keep] if key in ("boxes", "labels", "area", "iscrowd") else value
        for key, value in target.items()
    }


def score_detector(model: nn.Module, batches: Iterable[Batch], *, metric: str) -> float:
    """The proxy score (higher is better) of ``model`` on ``batches`` of (images, targets).

    ``"map50"`` / ``"map"``: eval-mode forward under ``torch.inference_mode()``, predictions moved to the
    CPU, then :func:`mean_average_precision` over every image. ``"loss"``: minus the mean of
    :func:`detection_loss` over the batches, each weighted by its number of images (the plain mean when the
    batches are of one size). The model's train/eval mode is restored.
    """
    metric = check_metric(metric)
    if metric == "loss":
        total, count = 0.0, 0
        for images, targets in batches:
            total += detection_loss(model, images, targets) * len(images)
            count += len(images)
        if count == 0:
            raise UserError("cannot score a detector on no images: the proxy batches are empty")
        return -total / count
    predictions, all_targets = detect(model, batches)
    return mean_average_precision(predictions, all_targets, metric=metric)


def detect(model: nn.Module, batches: Iterable[Batch]) -> tuple[list[Target], list[Target]]:
    """(detections, targets) of every image in ``batches``, on the CPU: ``model``'s eval-mode forward
    under ``torch.inference_mode()``, its train/eval mode restored. UserError when there are no images."""
    predictions: list[Target] = []
    all_targets: list[Target] = []
    with modes_restored(model), torch.inference_mode():
        model.eval()
        for images, targets in batches:
            outputs = model(list(images))
            predictions.extend({key: value.cpu() for key, value in output.items()} for output in outputs)
            all_targets.extend({key: value.cpu() for key, value in target.items()} for target in targets)
    if not all_targets:
        raise UserError("cannot score a detector on no images: the proxy batches are empty")
    return predictions, all_targets
