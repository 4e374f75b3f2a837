"""One in-memory form of a detection data set, its checks, and tensors as torchvision's detectors take them.

Every reader (VOC, COCO, the generated ``shapes``) produces a :class:`DetectionData`: one
:class:`DetectionImage` per image (file, size, boxes, labels, flags) and the class names. Boxes are
float32 ``x1, y1, x2, y2`` in pixel edges, ``0 <= x1 < x2 <= width`` (a box covering the whole 500 px wide
image is ``0, ..., 500, ...``); labels are int64 in ``1..K``.

Label convention (torchvision's detectors): label 0 is the background, the object classes are ``1..K``,
and ``classes[0] == "__background__"`` so ``classes[label]`` names any label and ``num_classes ==
len(classes) == K + 1`` is the ``num_classes`` a torchvision detector is built with -- the same list as
torchvision's ``weights.meta["categories"]``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from acp.errors import UserError

BACKGROUND = "__background__"
# Annotation tools round, and VOC's 1-based pixel indices put a box touching the left edge at -1 in pixel
# edges when a file says xmin=0: a box at most this far outside its image is clipped onto it, further out
# is an error.
BOX_TOLERANCE = 1.0


def check_box(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str
) -> tuple[float, float, float, float]:
    """The box clipped onto a ``width`` x ``height`` image, or UserError naming ``where`` (file: field)."""
    values = (x1, y1, x2, y2)
    if not all(math.isfinite(value) for value in values):
        raise UserError(f"{where}: box coordinates must be finite numbers, got {values}")
    if x2 <= x1 or y2 <= y1:
        axis = "x2 <= x1" if x2 <= x1 else "y2 <= y1"
        raise UserError(
            f"{where}: empty box ({axis}: x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} in pixel edges)"
        )
    tolerance = BOX_TOLERANCE
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise UserError(
            f"{where}: box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} (pixel edges) is outside its "
            f"{width}x{height} image"
        )
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise UserError(f"{where}: box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} lies outside its image")
    return clipped


def check_relative_path(text: object, where: str, *, plain_name: bool = False) -> str:
    """A file name from an annotation file that stays inside its folder: relative, no ``..``, no ``\\``."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: expected a file name, got {text!r}")
    parts = text.split("/")
    if (
        text.startswith("/")
        or "\\" in text
        or ":" in parts[0]
        or any(part in ("", ".", "..") for part in parts)
        or (plain_name and len(parts) > 1)
    ):
        kind = "a plain file name" if plain_name else "a relative path inside the image folder"
        raise UserError(f"{where}: file name {text!r} must be {kind} (no '..', '/' at the start, or '\\')")
    return text


def check_image_file(path: Path, width: int, height: int, where: str) -> None:
    """UserError unless ``path`` is an image of ``width`` x ``height`` (reads the header, not the pixels)."""
    from PIL import Image

    if not path.is_file():
        raise UserError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as opened:
            size = opened.size
    except Exception as error:
        raise UserError(f"{where}: image {path} cannot be read: {error}") from None
    if size != (width, height):
        raise UserError(f"{where}: says the image is {width}x{height}, but {path} is {size[0]}x{size[1]}")


@dataclass(frozen=True)
class DetectionImage:
    """One image's annotation. ``file`` is relative to the data set's ``image_root`` ('' when generated)."""

    image_id: str
    file: str
    width: int
    height: int
    boxes: np.ndarray  # float32 (N, 4): x1, y1, x2, y2 in pixel edges
    labels: np.ndarray  # int64 (N,): 1..K
    difficult: np.ndarray  # bool (N,): VOC's <difficult>1</difficult>
    crowd: np.ndarray  # bool (N,): COCO's iscrowd = 1
    source: str = ""  # where the annotation came from, for messages

    @property
    def ignored(self) -> np.ndarray:
        """Objects a detector is not asked to find (difficult or crowd): not trained on, and neither a hit
        nor a miss when scored."""
        return self.difficult | self.crowd


def make_image(
    image_id: str,
    file: str,
    width: int,
    height: int,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    *,
    difficult: Sequence[bool] | None = None,
    crowd: Sequence[bool] | None = None,
    source: str = "",
) -> DetectionImage:
    """A :class:`DetectionImage` with its arrays in canonical dtypes and shapes (boxes already checked)."""
    count = len(labels)
    return DetectionImage(
        image_id=image_id,
        file=file,
        width=int(width),
        height=int(height),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(count, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(count),
        difficult=np.zeros(count, bool) if difficult is None else np.asarray(difficult, bool).reshape(count),
        crowd=np.zeros(count, bool) if crowd is None else np.asarray(crowd, bool).reshape(count),
        source=source,
    )


@dataclass
class DetectionData:
    """Annotations of one data spec, and its pixels: decoded from files on access, or held (``pixels``).

    ``classes[0]`` is ``"__background__"``; ``category_ids[label - 1]`` is a COCO file's category id of a
    label (None for other formats).
    """

    spec: str
    format: str  # "voc", "coco" or "shapes"
    classes: tuple[str, ...]
    images: list[DetectionImage]
    image_root: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # uint8 (N, H, W, 3) when generated
    category_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if not self.classes or self.classes[0] != BACKGROUND:
            raise UserError(
                f"data {self.spec}: classes must start with {BACKGROUND!r}, got {self.classes[:3]}"
            )
        if len(set(self.classes)) != len(self.classes):
            raise UserError(f"data {self.spec}: duplicate class names in {self.classes}")
        if not self.images:
            raise UserError(f"data {self.spec}: no images")
        if self.pixels is not None and len(self.pixels) != len(self.images):
            raise UserError(
                f"data {self.spec}: {len(self.pixels)} pixel arrays for {len(self.images)} images"
            )
        for image in self.images:
            where = image.source or f"data {self.spec} image {image.image_id}"
            labels, boxes = image.labels, image.boxes
            if len(labels) and (labels.min() < 1 or labels.max() >= len(self.classes)):
                raise UserError(f"{where}: label outside 1..{len(self.classes) - 1}")
            inside = (
                (boxes[:, 0] >= 0)
                & (boxes[:, 1] >= 0)
                & (boxes[:, 2] <= image.width)
                & (boxes[:, 3] <= image.height)
                & (boxes[:, 2] > boxes[:, 0])
                & (boxes[:, 3] > boxes[:, 1])
            )
            if not inside.all():
                box = boxes[np.flatnonzero(~inside)[0]].tolist()
                raise UserError(
                    f"{where}: box {box} is empty or outside its {image.width}x{image.height} image"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Object classes + 1 for the background: a torchvision detector's ``num_classes``."""
        return len(self.classes)

    def path_of(self, index: int) -> Path:
        if self.image_root is None:
            raise ValueError(f"data {self.spec} is generated: its images have no files")
        return self.image_root / self.images[index].file

    def image(self, index: int) -> np.ndarray:
        """uint8 ``(H, W, 3)`` RGB pixels of image ``index``; UserError when its file is not what the
        annotation says."""
        if self.pixels is not None:
            return self.pixels[index]
        from PIL import Image

        annotation = self.images[index]
        path = self.path_of(index)
        try:
            with Image.open(path) as opened:
                pixels = np.array(opened.convert("RGB"))  # writable, for torch
        except Exception as error:
            raise UserError(f"image {path} cannot be decoded: {error}") from None
        if pixels.shape[:2] != (annotation.height, annotation.width):
            raise UserError(
                f"image {path} is {pixels.shape[1]}x{pixels.shape[0]}, but {annotation.source} says "
                f"{annotation.width}x{annotation.height}"
            )
        return pixels

    def target(self, index: int, *, with_ignored: bool = False) -> dict[str, torch.Tensor]:
        """``{"boxes": float32 [N, 4], "labels": int64 [N]}`` as torchvision's detectors take it.

        Without ``with_ignored`` the objects to learn (difficult and crowd ones left out, as torchvision's
        references train); with it every object and ``"iscrowd"`` (int64, 1 = ignored), the key
        torchmetrics' ``MeanAveragePrecision`` reads to neither reward nor punish them.
        """
        annotation = self.images[index]
        keep = np.ones(len(annotation.labels), bool) if with_ignored else ~annotation.ignored
        target = {
            "boxes": torch.from_numpy(annotation.boxes[keep].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(annotation.labels[keep].copy()),
        }
        if with_ignored:
            target["iscrowd"] = torch.from_numpy(annotation.ignored.astype(np.int64))
        return target

    def sample(
        self, index: int, *, float_chw: bool = True, with_ignored: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(image, target): float32 ``(3, H, W)`` in [0, 1] (torchvision's detectors normalize inside), or
        with ``float_chw=False`` the uint8 ``(H, W, 3)`` pixels; the target as :meth:`target`."""
        pixels = torch.from_numpy(np.ascontiguousarray(self.image(index)))
        if float_chw:
            pixels = pixels.permute(2, 0, 1).float().div_(255.0).contiguous()
        return pixels, self.target(index, with_ignored=with_ignored)

    def object_counts(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Objects per label (index 0, the background, stays 0) over ``indices`` (all when None)."""
        indices = range(len(self)) if indices is None else indices
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for index in indices:
            counts += np.bincount(self.images[int(index)].labels, minlength=self.num_classes)
        return counts

    def annotations_sha256(self) -> str:
        """A digest of every file name, size, box, label and flag, in order: what a run records to say
        which annotations it used."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for image in self.images:
            digest.update(f"\0{image.image_id}\0{image.file}\0{image.width}\0{image.height}\0".encode())
            for array in (image.boxes, image.labels, image.difficult, image.crowd):
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "format": self.format,
            "images": len(self),
            "objects": int(sum(len(image.labels) for image in self.images)),
            "classes": list(self.classes),
            "labels": "0 is the background; classes[label] names a label (torchvision's convention)",
            "annotations_sha256": self.annotations_sha256(),
        }


class DetectionDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset over ``indices`` of a :class:`DetectionData`: ``(image, target)`` pairs for
    a ``DataLoader(..., collate_fn=collate_detection)``."""

    def __init__(
        self,
        data: DetectionData,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        float_chw: bool = True,
        with_ignored: bool = False,
    ) -> None:
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.float_chw = float_chw
        self.with_ignored = with_ignored

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.data.sample(
            int(self.indices[position]), float_chw=self.float_chw, with_ignored=self.with_ignored
        )


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Lists of images and targets: torchvision's detectors take a list (images may differ in size)."""
    return [image for image, _ in batch], [target for _, target in batch]


def iterate_detection_batches(
    data: DetectionData,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    with_ignored: bool = False,
) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
    """Yield (images, targets) batches of float CHW images; order randomness only from ``generator``."""
    indices = np.asarray(indices, dtype=np.int64)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle needs an explicit torch.Generator")
        indices = indices[torch.randperm(len(indices), generator=generator).numpy()]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield collate_detection(
            [
                data.sample(int(index), with_ignored=with_ignored)
                for index in indices[start : start + batch_size]
            ]
        )
