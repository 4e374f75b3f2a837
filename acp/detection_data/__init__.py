"""Detection data: specs -> one validated in-memory form (boxes, labels, classes) -> torchvision's targets.

A detection data SPEC is
- ``shapes`` or ``shapes:SIZE``: generated coloured shapes on textured backgrounds with exact boxes
  (:mod:`acp.detection_data.shapes`: 512 images, SIZE x SIZE pixels, default 128; nothing downloaded),
- a Pascal VOC tree (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``; or a ``VOCdevkit`` folder
  with one ``VOC*`` tree in it), optionally ``PATH#IMAGESET`` (default ``trainval`` when listed, else
  every annotation),
- COCO: a folder with ``instances.json`` and ``images/``, or a ``.json`` instances file.

Labels follow torchvision's detectors: 0 is the background, ``classes[0] == "__background__"``, objects
are ``1..K`` and ``num_classes == K + 1``. Annotation files are untrusted: XML is parsed with DTDs
forbidden (defusedxml), JSON with every key, type and reference checked; a bad file is a UserError
naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from acp.detection_data.coco import find_coco, load_coco
from acp.detection_data.dataset import (
    BACKGROUND,
    DetectionData,
    DetectionDataset,
    DetectionImage,
    collate_detection,
    iterate_detection_batches,
)
from acp.detection_data.shapes import SHAPES_CLASSES, generate_shapes, load_shapes
from acp.detection_data.splits import check_detection_split, describe_detection_data, make_detection_splits
from acp.detection_data.voc import VOC_CLASSES, find_voc_root, load_voc
from acp.errors import UserError

__all__ = [
    "BACKGROUND",
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "DetectionData",
    "DetectionDataset",
    "DetectionImage",
    "check_detection_split",
    "collate_detection",
    "describe_detection_data",
    "generate_shapes",
    "is_detection_spec",
    "iterate_detection_batches",
    "load_coco",
    "load_detection_data",
    "load_voc",
    "make_detection_splits",
]


def is_detection_spec(spec: str) -> bool:
    """Whether ``spec`` names detection data (a generated set or a VOC/COCO layout), not classification."""
    spec = spec.strip()
    if spec == "shapes" or spec.startswith("shapes:"):
        return True
    path = Path(spec.partition("#")[0]).expanduser()
    if path.is_dir() and find_voc_root(path) is not None:
        return True
    return path.exists() and find_coco(path) is not None


def load_detection_data(spec: str, *, classes: list[str] | tuple[str, ...] | None = None) -> DetectionData:
    """Read the detection data named by ``spec`` (see the module docstring). ``classes`` (object classes,
    no background) applies to VOC trees; COCO files name their categories."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"detection data spec must be 'shapes', a VOC folder or a COCO file, got {spec!r}")
    spec = spec.strip()
    if spec == "shapes" or spec.startswith("shapes:"):
        return load_shapes(spec)
    location, _, image_set = spec.partition("#")
    path = Path(location).expanduser()
    if not path.exists():
        raise UserError(f"data path not found: {location}")
    voc_root = find_voc_root(path) if path.is_dir() else None
    if voc_root is not None:
        return load_voc(voc_root, image_set=image_set or None, classes=classes, spec=spec)
    if image_set:
        raise UserError(
            f"data spec {spec!r}: '#{image_set}' selects a VOC image set, but {location} is no VOC tree"
        )
    coco = find_coco(path)
    if coco is not None:
        return load_coco(coco[0], image_dir=coco[1], spec=spec)
    raise UserError(
        f"data path {location} is neither a VOC tree (Annotations/, JPEGImages/, ImageSets/Main/) nor COCO "
        "(instances.json + images/, or a .json file)"
    )
