"""The detection proxy: a torchvision detector's width vector -> a score record, as the classifier's.

:class:`DetectionProxyEvaluator` is :class:`~acp.proxy.evaluator.ProxyEvaluator`'s recipe, cache, failure
handling, token and shipping (:class:`~acp.proxy.evaluator.BaseProxyEvaluator`) with a detector's inputs
and score. One evaluation:

1. the criterion picks each group's kept channels; :func:`acp.prune.materialize` slices a copy of the
   whole detector (its network view, :func:`acp.models.detection.traced_network`, is what the space was
   built on);
2. optional ``finetune_steps`` SGD steps on the calibration images, on the detector's own training loss;
3. BatchNorm recalibration: the detector's eval-mode forward (transform, network, box decoding) on
   ``calibration_batches`` lists of ``calibration_batch_size`` images, with only its BatchNorms in train
   mode, statistics reset and averaged (``momentum=None``), as for a classifier;
4. :func:`acp.proxy.detection_score.score_detector` on the proxy-validation images, in batches of
   ``eval_batch_size``, with ``[proxy] score`` as the metric.

What a :class:`~acp.proxy.evaluator.Result` holds, by ``[proxy] score`` (``score`` is maximized):

- ``"map50"``: ``score == accuracy ==`` mAP@0.5; ``loss`` is NaN (not computed);
- ``"map"``: ``score == accuracy ==`` mAP@[.5:.95]; ``loss`` is NaN (not computed);
- ``"loss"``: ``loss`` is the detector's training loss on the validation images (the sum of its loss
  dictionary, mean over images, no learning: :func:`~acp.proxy.detection_score.detection_loss`),
  ``score == -loss``; ``accuracy`` is NaN (no mAP computed).

Each evaluation runs one pass over the validation images -- the eval-mode detections or the loss, never
both (that would double its cost). The mAPs are COCO's 101-point APs (:mod:`acp.proxy.detection_score`);
difficult / crowd objects are neither hits nor misses. A non-finite score is a failed evaluation
(``score = -inf``).

Images are float32 ``(3, H, W)`` in ``[0, 1]``, as a torchvision detector takes them (its transform
normalizes and resizes), any size; both slices come from the *training* split (never the validation split)
and are disjoint. Determinism is the classifier's: the same widths give the same score bit for bit in any
process with the same ``[proxy] threads``, also after pickling (the R-CNN family's loss samples anchors on
a seeded generator).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from acp.detection_data import DetectionData
from acp.errors import UserError
from acp.proxy.data import checked_slice_request, digest
from acp.proxy.detection_score import countable_boxes, score_detector
from acp.proxy.evaluator import BaseProxyEvaluator, NonFiniteScore, finalist_slice_sizes
from acp.settings import ProxySettings

Target = dict[str, torch.Tensor]
Batch = tuple[list[torch.Tensor], list[Target]]
TARGET_KEYS = {"boxes": torch.float32, "labels": torch.int64, "iscrowd": torch.int64}  # iscrowd optional


def detection_proxy_slices(
    train_indices: np.ndarray,
    calibration_images: int,
    validation_images: int,
    *,
    seed: int,
    avoid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (calibration, validation) image indices :meth:`DetectionProxyData.from_detection_data` takes:
    one seeded permutation of the training indices, calibration its first images (in that order, so each
    batch is a random mix), validation the next ones not in ``avoid`` (sorted). An image holds several
    classes, so unlike classification's slices these are not stratified."""
    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    order = np.random.default_rng(seed).permutation(train)
    calibration, rest = order[:calibration_images], order[calibration_images:]
    if avoid is not None:
        rest = rest[~np.isin(rest, np.asarray(avoid, dtype=np.int64))]
    if calibration_images > len(train) or validation_images > len(rest):
        where = "" if avoid is None else " outside the avoided images"
        raise UserError(
            f"proxy data: {calibration_images} calibration + {validation_images} validation images "
            f"requested, but the training split has only {len(train)}{where}"
        )
    return calibration, np.sort(rest[:validation_images])


def _pack_images(images: list[torch.Tensor]) -> dict:
    """One flat float32 array and the shapes: pickled (or memory-mapped by loky) as one block."""
    return {
        "pixels": np.concatenate([image.reshape(-1).numpy() for image in images]),
        "shapes": np.asarray([tuple(image.shape) for image in images], dtype=np.int64),
    }


def _unpack_images(packed: dict) -> list[torch.Tensor]:
    flat = torch.from_numpy(np.array(packed["pixels"], copy=True))  # a read-only memmap must not back them
    shapes = packed["shapes"].tolist()
    sizes = [int(np.prod(shape)) for shape in shapes]
    return [chunk.view(*shape) for chunk, shape in zip(torch.split(flat, sizes), shapes)]


def _pack_targets(targets: list[Target]) -> dict:
    packed = {"counts": np.asarray([len(target["labels"]) for target in targets], dtype=np.int64)}
    for key in targets[0]:
        packed[key] = np.concatenate([target[key].numpy() for target in targets])
    return packed


def _unpack_targets(packed: dict) -> list[Target]:
    ends = np.cumsum(packed["counts"]).tolist()
    starts = [0, *ends[:-1]]
    keys = [key for key in packed if key != "counts"]
    return [
        {key: torch.from_numpy(np.array(packed[key][start:end], copy=True)) for key in keys}
        for start, end in zip(starts, ends)
    ]


@dataclass(eq=False)
class DetectionProxyData:
    """Calibration images (BatchNorm re-estimation; their training targets only for finetune steps) and
    proxy-validation images with their targets.

    Images: lists of float32 ``(3, H, W)`` tensors in ``[0, 1]``. ``calibration_targets`` hold the objects
    to learn (``boxes``, ``labels``; difficult/crowd ones left out); ``validation_targets`` every object
    and ``iscrowd`` (1 = neither a hit nor a miss), as :meth:`acp.detection_data.DetectionData.target`
    gives them. ``description`` records how the slices were drawn (for a run directory). Holds no
    reference to the :class:`~acp.detection_data.DetectionData` it came from.
    """

    calibration_images: list[torch.Tensor]
    calibration_targets: list[Target]
    validation_images: list[torch.Tensor]
    validation_targets: list[Target]
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("calibration_images", "validation_images"):
            images = getattr(self, name)
            if not isinstance(images, list | tuple) or not images:
                raise UserError(f"proxy data: {name} must be a non-empty list of image tensors")
            for position, image in enumerate(images):
                if not (
                    isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.dim() == 3
                ):
                    raise UserError(f"proxy data: {name}[{position}] must be a float32 tensor (3, H, W)")
                if image.shape[0] != 3 or image.numel() == 0:
                    raise UserError(f"proxy data: {name}[{position}] is {tuple(image.shape)}, not (3, H, W)")
                if not bool(((image >= 0) & (image <= 1)).all()):
                    raise UserError(
                        f"proxy data: {name}[{position}] has values outside [0, 1] (a detector's transform "
                        "normalizes; give it unnormalized images)"
                    )
            setattr(self, name, [image.contiguous() for image in images])
        for name, images in (
            ("calibration_targets", self.calibration_images),
            ("validation_targets", self.validation_images),
        ):
            setattr(self, name, self._checked_targets(name, getattr(self, name), len(images)))
        if not any(countable_boxes(target) for target in self.validation_targets):
            raise UserError(
                f"proxy data: validation_targets: none of the {len(self.validation_targets)} validation "
                "images has an object to find (not marked iscrowd), so no mAP or loss can rank candidates; "
                "draw another slice (more validation images, another seed)"
            )

    @staticmethod
    def _checked_targets(name: str, targets: object, count: int) -> list[Target]:
        if not isinstance(targets, list | tuple) or len(targets) != count:
            raise UserError(f"proxy data: {name} must be a list of {count} target dicts, one per image")
        keys = set(targets[0]) if targets and isinstance(targets[0], dict) else set()
        checked = []
        for position, target in enumerate(targets):
            where = f"proxy data: {name}[{position}]"
            if not isinstance(target, dict) or not {"boxes", "labels"} <= set(target) <= set(TARGET_KEYS):
                raise UserError(f"{where} must be a dict of boxes, labels (and optionally iscrowd)")
            if set(target) != keys:
                raise UserError(f"{where} has keys {sorted(target)}, the first target {sorted(keys)}")
            objects = len(target["labels"]) if isinstance(target["labels"], torch.Tensor) else -1
            for key, tensor in target.items():
                shape = (objects, 4) if key == "boxes" else (objects,)
                if (
                    not isinstance(tensor, torch.Tensor)
                    or tensor.dtype != TARGET_KEYS[key]
                    or tuple(tensor.shape) != shape
                ):
                    kind = str(TARGET_KEYS[key]).removeprefix("torch.")
                    raise UserError(f"{where}: {key} must be a {kind} tensor of shape {shape}")
            checked.append({key: tensor.contiguous() for key, tensor in target.items()})
        return checked

    @classmethod
    def from_detection_data(
        cls,
        data: DetectionData,
        train_indices: np.ndarray,
        *,
        calibration_images: int,
        validation_images: int,
        seed: int = 0,
        avoid: np.ndarray | None = None,
    ) -> DetectionProxyData:
        """Two disjoint slices of ``data[train_indices]`` (:func:`detection_proxy_slices`), validation never
        from ``avoid`` (e.g. another proxy's validation images). ``train_indices`` must be the training
        split: the search never sees the validation images."""
        if not isinstance(data, DetectionData):
            raise UserError(f"proxy data: expected DetectionData, got {type(data).__name__}")
        calibration_images, validation_images, seed, train = checked_slice_request(
            calibration_images, validation_images, seed, train_indices, len(data)
        )
        calibration, validation = detection_proxy_slices(
            train, calibration_images, validation_images, seed=int(seed), avoid=avoid
        )
        cal_images, cal_targets = zip(*(data.sample(int(index)) for index in calibration))
        val_images, val_targets = zip(*(data.sample(int(index), with_ignored=True) for index in validation))
        description = {
            "spec": data.spec,
            "format": data.format,
            "classes": list(data.classes),
            "seed": int(seed),
            **({} if avoid is None else {"avoided_sha256": digest(np.unique(np.asarray(avoid, np.int64)))}),
            "train_size": int(len(train)),
            "train_sha256": digest(train),
            "calibration_images": int(len(calibration)),
            "calibration_sha256": digest(calibration),
            "validation_images": int(len(validation)),
            "validation_sha256": digest(validation),
            "validation_objects": int(sum(countable_boxes(target) for target in val_targets)),
        }
        return cls(list(cal_images), list(cal_targets), list(val_images), list(val_targets), description)

    def calibration_batches(self, batch_size: int, count: int) -> list[Batch]:
        """The first ``count`` batches of ``batch_size`` calibration (images, targets)."""
        needed = batch_size * count
        if needed > len(self.calibration_images):
            raise UserError(
                f"proxy settings ask for {count} calibration batches of {batch_size} images ({needed}), "
                f"but the proxy data has {len(self.calibration_images)} calibration images"
            )
        return self._batches(self.calibration_images, self.calibration_targets, batch_size, needed)

    def validation_batches(self, batch_size: int) -> list[Batch]:
        """Every validation (images, targets), in batches of ``batch_size`` (the last may be smaller)."""
        return self._batches(
            self.validation_images, self.validation_targets, batch_size, len(self.validation_images)
        )

    @staticmethod
    def _batches(
        images: list[torch.Tensor], targets: list[Target], batch_size: int, stop: int
    ) -> list[Batch]:
        return [
            (images[start : min(start + batch_size, stop)], targets[start : min(start + batch_size, stop)])
            for start in range(0, stop, batch_size)
        ]

    def fingerprint(self) -> str:
        """Digest of every image and target: equal fingerprints mean equal scores."""
        combined = hashlib.sha256()
        for images, targets in (
            (self.calibration_images, self.calibration_targets),
            (self.validation_images, self.validation_targets),
        ):
            for image, target in zip(images, targets):
                combined.update(repr(tuple(image.shape)).encode())
                combined.update(image.numpy().tobytes())
                for key, tensor in target.items():
                    combined.update(key.encode() + tensor.numpy().tobytes())
        return combined.hexdigest()[:16]

    def __getstate__(self) -> dict:
        # each slice as one flat numpy array: pickled once, memory-mapped by loky, no per-image overhead
        return {
            "calibration_images": _pack_images(self.calibration_images),
            "calibration_targets": _pack_targets(self.calibration_targets),
            "validation_images": _pack_images(self.validation_images),
            "validation_targets": _pack_targets(self.validation_targets),
            "description": self.description,
        }

    def __setstate__(self, state: dict) -> None:
        self.calibration_images = _unpack_images(state["calibration_images"])
        self.calibration_targets = _unpack_targets(state["calibration_targets"])
        self.validation_images = _unpack_images(state["validation_images"])
        self.validation_targets = _unpack_targets(state["validation_targets"])
        self.description = state["description"]


def detector_configuration(model: nn.Module) -> bytes:
    """The plain settings of every submodule (the transform's sizes, mean and std, score and NMS
    thresholds, detections per image, anchor ratios, BatchNorm eps, ...): they decide a detector's
    score as much as its weights do, and no state_dict holds them."""
    internal = set(vars(nn.Module()))

    def settings_of(module: nn.Module):
        for key, value in sorted(vars(module).items()):
            if key in internal:
                continue
            if plain(value):
                yield key, value
            elif not isinstance(value, nn.Module | torch.Tensor) and hasattr(value, "__dict__"):
                # helper objects of torchvision's detectors: BoxCoder (weights, clip), Matcher (thresholds)
                yield from (
                    (f"{key}.{name}", item) for name, item in sorted(vars(value).items()) if plain(item)
                )

    def plain(value) -> bool:
        if isinstance(value, (bool, int, float, str, type(None))):
            return True
        if isinstance(value, (list, tuple)):
            return all(plain(item) for item in value)
        if isinstance(value, dict):
            return all(isinstance(key, str) and plain(item) for key, item in value.items())
        return False

    lines = [
        f"{name}:{key}={value!r}"
        for name, module in model.named_modules()
        for key, value in settings_of(module)
    ]
    return "\n".join(lines).encode()


class DetectionProxyEvaluator(BaseProxyEvaluator):
    """The detection proxy (module docstring): ``base_model`` is a torchvision detector acp traces
    (:func:`acp.models.detection.is_detector`), ``data`` a :class:`DetectionProxyData`, ``settings.score``
    ``"map50"``, ``"map"`` or ``"loss"``. The API, :class:`~acp.proxy.evaluator.Result`, caching and
    shipping are :class:`~acp.proxy.evaluator.ProxyEvaluator`'s."""

    TASK = "detection"
    DATA = DetectionProxyData

    def _check_inputs(
        self, base_model: nn.Module, space, data: DetectionProxyData, settings: ProxySettings
    ) -> None:
        from acp.models.detection import detector_names, is_detector

        if not is_detector(base_model):
            raise UserError(
                f"base_model: expected a torchvision box detector ({', '.join(detector_names())}, or a "
                f"subclass of their classes), got {type(base_model).__name__}"
            )
        data.calibration_batches(settings.calibration_batch_size, settings.calibration_batches)  # enough?

    def _reset_runtime_state(self) -> None:
        super()._reset_runtime_state()
        self._calibration_inputs: tuple[list[list[torch.Tensor]], list[list[Target]]] | None = None

    def _calibration(self) -> tuple[list[list[torch.Tensor]], list[list[Target]]]:
        if self._calibration_inputs is None:
            settings = self.settings
            batches = self.data.calibration_batches(
                settings.calibration_batch_size, settings.calibration_batches
            )
            self._calibration_inputs = (
                [images for images, _ in batches],
                [targets for _, targets in batches],
            )
        return self._calibration_inputs

    def _training_loss(
        self, model: nn.Module, images: list[torch.Tensor], targets: list[Target]
    ) -> torch.Tensor:
        losses = model(list(images), list(targets))
        if not isinstance(losses, dict) or not losses:
            raise UserError(
                f"{type(model).__name__} in training mode returned {type(losses).__name__}, not a "
                "torchvision detector's loss dictionary"
            )
        return sum(losses.values())

    def _score(self, model: nn.Module) -> tuple[float, float, float]:
        metric = self.settings.score
        value = score_detector(
            model, self.data.validation_batches(self.settings.eval_batch_size), metric=metric
        )
        if not math.isfinite(value):
            raise NonFiniteScore(f"non-finite validation {metric} ({value})")
        if metric == "loss":
            return value, math.nan, -value
        return value, value, math.nan

    def _token_parts(self) -> bytes:
        return detector_configuration(self._base)


def default_detection_proxy_data(
    data: DetectionData, train_indices: np.ndarray, settings: ProxySettings, *, seed: int
) -> DetectionProxyData:
    """DetectionProxyData sized for ``settings``: ``calibration_batches * calibration_batch_size``
    calibration and ``validation_images`` proxy-validation images from the training split."""
    return DetectionProxyData.from_detection_data(
        data,
        train_indices,
        calibration_images=max(1, settings.calibration_images),
        validation_images=settings.validation_images,
        seed=seed,
    )


def finalist_detection_proxy_data(
    data: DetectionData,
    train_indices: np.ndarray,
    proxy: ProxySettings,
    finalist: ProxySettings,
    *,
    seed: int,
) -> DetectionProxyData:
    """DetectionProxyData for re-scoring finalists, sized and placed as classification's
    (:func:`acp.proxy.evaluator.finalist_proxy_data`): validation images the search's proxy did not score
    on, as many as the training split has left."""

    def slices(train, calibration_images, validation_images, seed):
        return detection_proxy_slices(train, calibration_images, validation_images, seed=seed)

    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    calibration_images, count, avoid = finalist_slice_sizes(slices, train, proxy, finalist, seed=seed)
    return DetectionProxyData.from_detection_data(
        data, train, calibration_images=calibration_images, validation_images=count, seed=seed, avoid=avoid
    )


__all__ = [
    "DetectionProxyData",
    "DetectionProxyEvaluator",
    "default_detection_proxy_data",
    "detection_proxy_slices",
    "detector_configuration",
    "finalist_detection_proxy_data",
]
