"""COCO JSON: ``images/`` + ``instances.json`` (or any annotation file with its image folder).

JSON cannot expand entities or reach other files, but the file is still untrusted: every key, type, id
and reference is checked before it is used, ``NaN``/``Infinity`` literals are refused, and a file larger
than ``MAX_JSON_BYTES`` is refused before it is read. Boxes are COCO's ``[x, y, width, height]`` in pixel
edges -> ``x1 = x, y1 = y, x2 = x + width, y2 = y + height``. Category ids (often 1..90 with gaps) become
labels ``1..K`` in increasing id order; ``DetectionData.category_ids`` maps them back. Images are kept in
increasing id order, so a file saved in another order gives the same data set and the same splits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from acp.detection_data.dataset import (
    BACKGROUND,
    DetectionData,
    check_box,
    check_image_file,
    check_relative_path,
    make_image,
)
from acp.errors import UserError

ANNOTATION_FILE = "instances.json"
IMAGE_FOLDER = "images"
MAX_JSON_BYTES = 2 * 2**30  # COCO's train2017 instances file is 0.45 GB


def find_coco(path: Path) -> tuple[Path, Path] | None:
    """(annotation file, image folder) of a COCO spec: ``DIR`` with ``instances.json`` (images in
    ``DIR/images``), or a ``.json`` file (images in the ``images/`` next to it, else next to it)."""
    if path.is_dir() and (path / ANNOTATION_FILE).is_file():
        return path / ANNOTATION_FILE, path / IMAGE_FOLDER
    if path.is_file() and path.suffix.lower() == ".json":
        beside = path.parent / IMAGE_FOLDER
        return path, beside if beside.is_dir() else path.parent
    return None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: Path) -> object:
    """The document of an untrusted JSON file; UserError naming the file for anything refused."""
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError(f"annotation file {path} not found") from None
    if size > MAX_JSON_BYTES:
        raise UserError(f"annotation file {path} is {size} bytes, more than the {MAX_JSON_BYTES} acp reads")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, huge ints, nesting
        raise UserError(f"annotation file {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise UserError(f"annotation file {path} cannot be read: {error}") from None


def _field(entry: dict, key: str, kind: str, where: str):
    if key not in entry:
        raise UserError(f"{where}: missing key {key!r}")
    value = entry[key]
    if kind == "id" and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{where}.{key}: expected an integer id, got {value!r}")
    if kind == "pixels" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{where}.{key}: expected a positive whole number of pixels, got {value!r}")
    if kind == "name" and (not isinstance(value, str) or not value.strip()):
        raise UserError(f"{where}.{key}: expected a non-empty name, got {value!r}")
    return value


def _entries(document: dict, key: str, where: str) -> list[dict]:
    if key not in document:
        raise UserError(f"{where}: missing key {key!r}")
    entries = document[key]
    if not isinstance(entries, list):
        raise UserError(f"{where}: {key!r} must be a list, got {type(entries).__name__}")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {key}[{number}] must be an object, got {type(entry).__name__}")
    return entries


def load_coco(
    annotation_file: str | os.PathLike, *, image_dir: str | os.PathLike | None = None, spec: str | None = None
) -> DetectionData:
    """Read a COCO instances file; images are looked for in ``image_dir`` (default: as :func:`find_coco`)."""
    path = Path(annotation_file)
    if image_dir is None:
        located = find_coco(path)
        image_dir = located[1] if located else path.parent
    image_dir = Path(image_dir)
    document = read_json(path)
    where = str(path)
    if not isinstance(document, dict):
        raise UserError(f"{where}: expected a JSON object with images, annotations and categories")

    categories: dict[int, str] = {}
    for number, entry in enumerate(_entries(document, "categories", where)):
        at = f"{where}: categories[{number}]"
        category_id, name = _field(entry, "id", "id", at), _field(entry, "name", "name", at)
        if category_id in categories:
            raise UserError(f"{at}.id: category id {category_id} appears twice")
        if name in categories.values() or name == BACKGROUND:
            raise UserError(f"{at}.name: category name {name!r} appears twice or is reserved")
        categories[category_id] = name
    if not categories:
        raise UserError(f"{where}: 'categories' is empty")
    category_ids = tuple(sorted(categories))
    label_of = {category_id: label for label, category_id in enumerate(category_ids, start=1)}

    images: dict[int, dict] = {}
    for number, entry in enumerate(_entries(document, "images", where)):
        at = f"{where}: images[{number}]"
        image_id = _field(entry, "id", "id", at)
        if image_id in images:
            raise UserError(f"{at}.id: image id {image_id} appears twice")
        images[image_id] = {
            "file": check_relative_path(_field(entry, "file_name", "name", at), f"{at}.file_name"),
            "width": _field(entry, "width", "pixels", at),
            "height": _field(entry, "height", "pixels", at),
            "where": at,
            "boxes": [],
            "labels": [],
            "crowd": [],
        }

    annotation_ids: set[int] = set()
    for number, entry in enumerate(_entries(document, "annotations", where)):
        at = f"{where}: annotations[{number}]"
        if "id" in entry:
            annotation_id = _field(entry, "id", "id", at)
            if annotation_id in annotation_ids:
                raise UserError(f"{at}.id: annotation id {annotation_id} appears twice")
            annotation_ids.add(annotation_id)
        image_id = _field(entry, "image_id", "id", at)
        if image_id not in images:
            raise UserError(f"{at}.image_id: no image has id {image_id}")
        category_id = _field(entry, "category_id", "id", at)
        if category_id not in label_of:
            raise UserError(
                f"{at}.category_id: unknown category {category_id} (categories: {list(category_ids)})"
            )
        bbox = _field(entry, "bbox", "bbox", at)
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox
            )
        ):
            raise UserError(f"{at}.bbox: expected [x, y, width, height] as 4 numbers, got {bbox!r}")
        crowd = entry.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise UserError(f"{at}.iscrowd: expected 0 or 1, got {crowd!r}")
        image = images[image_id]
        x, y, box_width, box_height = (float(v) for v in bbox)
        image["boxes"].append(
            check_box(
                x, y, x + box_width, y + box_height, image["width"], image["height"], f"{at}.bbox {bbox}"
            )
        )
        image["labels"].append(label_of[category_id])
        image["crowd"].append(bool(crowd))
    if not images:
        raise UserError(f"{where}: 'images' is empty")

    records = []
    for image_id in sorted(images):
        image = images[image_id]
        check_image_file(image_dir / image["file"], image["width"], image["height"], image["where"])
        records.append(
            make_image(
                str(image_id),
                image["file"],
                image["width"],
                image["height"],
                image["boxes"],
                image["labels"],
                crowd=image["crowd"],
                source=image["where"],
            )
        )
    return DetectionData(
        spec=spec or str(path),
        format="coco",
        classes=(BACKGROUND, *(categories[category_id] for category_id in category_ids)),
        images=records,
        image_root=image_dir,
        category_ids=category_ids,
    )
