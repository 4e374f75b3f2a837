"""Deterministic train/validation splits of a detection data set, in classification's vocabulary.

The result is :class:`acp.data.Splits` (method, seed, index arrays, ``describe()`` with sizes and digests),
so a run records a detection split exactly as it records a classification one.
"""

from __future__ import annotations

import logging

import numpy as np

from acp.data import SMALL_VALIDATION, Splits, split_fraction
from acp.detection_data.dataset import DetectionData
from acp.detection_data.voc import IMAGE_ID
from acp.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SPLIT = "random:0.1"


def make_detection_splits(data: DetectionData, method: str = "auto", *, seed: int = 0) -> Splits:
    """``random:F`` (a fraction F of the images, drawn from ``seed``, is validation), ``tail:K`` (the last K
    images in the data set's order), ``imageset:NAME`` (VOC only: the images listed in
    ``ImageSets/Main/NAME.txt``, e.g. ``imageset:val`` inside ``trainval``), or ``auto`` (``random:0.1``).

    Images hold several classes, so unlike classification's ``random:F`` the draw is not stratified; the
    split is checked instead: every class needs an object in training, and validation must not be empty.
    """
    if method == "auto":
        method = DEFAULT_SPLIT
    kind, _, argument = method.partition(":")
    count = len(data)
    is_val = np.zeros(count, dtype=bool)
    if kind == "tail":
        if not (argument.isascii() and argument.isdigit()) or not 1 <= int(argument) < count:
            raise UserError(f"split {method!r}: tail:K needs a whole number 1 <= K < {count} (the images)")
        is_val[count - int(argument) :] = True
    elif kind == "random":
        fraction = split_fraction(method, argument)
        is_val[np.random.default_rng(seed).permutation(count)[: int(round(count * fraction))]] = True
    elif kind == "imageset":
        is_val[_listed(data, method, argument)] = True
    else:
        raise UserError(f"unknown split {method!r}: use 'random:F', 'tail:K' or 'imageset:NAME' (VOC)")
    splits = Splits(method, seed, np.flatnonzero(~is_val), np.flatnonzero(is_val))
    check_detection_split(data, splits)
    return splits


def _listed(data: DetectionData, method: str, name: str) -> np.ndarray:
    if data.format != "voc" or data.image_root is None:
        raise UserError(
            f"split {method!r}: imageset:NAME needs a VOC data set, not {data.format} data {data.spec}"
        )
    if not IMAGE_ID.fullmatch(name):
        raise UserError(f"split {method!r}: NAME must be a plain image set name such as val")
    list_file = data.image_root.parent / "ImageSets" / "Main" / f"{name}.txt"
    if not list_file.is_file():
        raise UserError(f"split {method!r}: {list_file} not found")
    listed = {line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()}
    return np.asarray([image.image_id in listed for image in data.images], dtype=bool)


def check_detection_split(data: DetectionData, splits: Splits) -> None:
    """UserError for a split nothing can be learnt or measured on; a warning for a small validation part."""
    where = f"split {splits.method!r} of data {data.spec} ({len(data)} images)"
    if len(splits.train) == 0:
        raise UserError(f"{where}: the training split is empty; hold out less")
    trained, total = data.object_counts(splits.train), data.object_counts()
    absent = [data.classes[label] for label in range(1, data.num_classes) if total[label] == 0]
    if absent:
        log.warning("data %s has no object of class %s", data.spec, ", ".join(absent))
    missing = [
        data.classes[label] for label in range(1, data.num_classes) if trained[label] == 0 < total[label]
    ]
    if missing:
        raise UserError(
            f"{where}: no training image has an object of class {', '.join(map(repr, missing))}; "
            "every class needs training objects: hold out less, or add images"
        )
    if len(splits.val) == 0:
        raise UserError(f"{where}: the validation split is empty; hold out more, e.g. random:0.2 or tail:1")
    if len(splits.val) < SMALL_VALIDATION:
        log.warning("%s: only %d validation images (%d training)", where, len(splits.val), len(splits.train))


def describe_detection_data(data: DetectionData, splits: Splits) -> dict:
    """What a run records about its detection data: the data set's description and the split's."""
    return {**data.describe(), "split": splits.describe()}
