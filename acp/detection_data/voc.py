"""Pascal VOC layout: ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/<set>.txt``.

Annotation files are untrusted input. They are parsed with defusedxml with DTDs forbidden, so a file that
declares one -- the carrier of entity expansion ("billion laughs") and of external entities that read
other files or URLs -- is refused when the parser meets ``<!DOCTYPE``, before any entity is defined, let
alone expanded; a file larger than ``MAX_XML_BYTES`` is refused before it is read.

VOC boxes are 1-based inclusive pixel indices; they become pixel edges as ``x1 = xmin - 1, y1 = ymin - 1,
x2 = xmax, y2 = ymax`` (a box over a whole 500 px wide image is ``xmin=1, xmax=500`` -> ``0, 500``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from xml.etree.ElementTree import Element

from acp.detection_data.dataset import (
    BACKGROUND,
    DetectionData,
    DetectionImage,
    check_box,
    check_image_file,
    check_relative_path,
    make_image,
)
from acp.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CLASSES_FILE = "classes.txt"  # ROOT/classes.txt names the classes of a VOC-format set of other classes
MAX_XML_BYTES = 4 * 2**20  # a VOC annotation is ~1 KB; 4 MiB holds thousands of objects
IMAGE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def find_voc_root(path: Path) -> Path | None:
    """``path`` when it holds ``Annotations/``, or its one ``VOC*`` subfolder that does (``VOCdevkit``)."""
    if (path / "Annotations").is_dir():
        return path
    found = sorted(child for child in path.glob("VOC*") if (child / "Annotations").is_dir())
    return found[0] if len(found) == 1 else None


def load_voc(
    root: str | os.PathLike,
    *,
    image_set: str | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    spec: str | None = None,
) -> DetectionData:
    """Read a VOC tree. ``image_set`` names ``ImageSets/Main/<image_set>.txt`` (default: ``trainval`` when
    present, else every ``Annotations/*.xml`` in sorted order). ``classes`` (object classes, no background):
    given, else ``ROOT/classes.txt`` (one name a line), else VOC's 20 classes."""
    root = Path(root)
    object_classes = _object_classes(root, classes)
    class_index = {name: label for label, name in enumerate(object_classes, start=1)}
    ids = _image_ids(root, image_set)
    images = [_read_annotation(root, image_id, class_index) for image_id in ids]
    return DetectionData(
        spec=spec or str(root),
        format="voc",
        classes=(BACKGROUND, *object_classes),
        images=images,
        image_root=root / "JPEGImages",
    )


def _object_classes(root: Path, classes) -> tuple[str, ...]:
    where = "classes argument"
    if classes is None and (root / CLASSES_FILE).is_file():
        where = str(root / CLASSES_FILE)
        lines = (root / CLASSES_FILE).read_text(encoding="utf-8").splitlines()
        classes = [line.strip() for line in lines if line.strip()]
    if classes is None:
        return VOC_CLASSES
    classes = tuple(classes)
    if not classes or not all(isinstance(name, str) and name.strip() for name in classes):
        raise UserError(f"{where}: expected class names, got {list(classes)!r}")
    if BACKGROUND in classes or len(set(classes)) != len(classes):
        raise UserError(f"{where}: class names must be unique and not {BACKGROUND!r}, got {list(classes)}")
    return classes


def _image_ids(root: Path, image_set: str | None) -> list[str]:
    lists = root / "ImageSets" / "Main"
    if image_set is None and (lists / "trainval.txt").is_file():
        image_set = "trainval"
    if image_set is None:
        ids = sorted(path.stem for path in (root / "Annotations").glob("*.xml"))
        if not ids:
            raise UserError(f"VOC folder {root / 'Annotations'} has no .xml annotation files")
        return ids
    if not IMAGE_ID.fullmatch(image_set):
        raise UserError(f"VOC image set {image_set!r} must be a plain name such as trainval or val")
    list_file = lists / f"{image_set}.txt"
    if not list_file.is_file():
        available = sorted(path.stem for path in lists.glob("*.txt") if "_" not in path.stem)
        raise UserError(
            f"VOC image set {list_file} not found (image sets there: {', '.join(available) or 'none'})"
        )
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]  # per-class lists carry a second column (1 / -1 / 0)
        if not IMAGE_ID.fullmatch(image_id):
            raise UserError(
                f"{list_file}: line {number}: {image_id!r} is not an image id (letters, digits, _.-)"
            )
        if image_id in seen:
            raise UserError(f"{list_file}: line {number}: image id {image_id} is listed twice")
        seen.add(image_id)
        ids.append(image_id)
    if not ids:
        raise UserError(f"VOC image set {list_file} lists no images")
    return ids


def parse_xml(path: Path) -> Element:
    """The root element of an untrusted XML file; UserError naming the file for anything refused."""
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError(f"annotation file {path} not found") from None
    if size > MAX_XML_BYTES:
        raise UserError(
            f"annotation file {path} is {size} bytes, more than the {MAX_XML_BYTES} an annotation may be"
        )
    try:
        from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
        from defusedxml.ElementTree import ParseError, parse
    except ImportError:
        raise UserError("reading VOC annotations needs defusedxml: pip install 'acp[detection]'") from None
    refused = "is refused: it declares a DTD (<!DOCTYPE>), which can expand entities or read other files"
    try:
        return parse(path, forbid_dtd=True).getroot()
    except DTDForbidden:
        raise UserError(f"annotation file {path} {refused}; VOC annotations have none") from None
    except (EntitiesForbidden, ExternalReferenceForbidden) as error:
        raise UserError(f"annotation file {path} is refused: {error}") from None
    except ParseError as error:
        raise UserError(f"annotation file {path} is not well-formed XML: {error}") from None
    except OSError as error:
        raise UserError(f"annotation file {path} cannot be read: {error}") from None


def _child(element: Element, name: str, where: str) -> Element:
    child = element.find(name)
    if child is None:
        raise UserError(f"{where}: missing <{name}> element")
    return child


def _text(element: Element, name: str, where: str) -> str:
    text = (_child(element, name, where).text or "").strip()
    if not text:
        raise UserError(f"{where}/{name}: empty element")
    return text


def _number(element: Element, name: str, where: str) -> float:
    text = _text(element, name, where)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{where}/{name}: malformed number {text!r}")
    return value


def _size(element: Element, name: str, where: str) -> int:
    text = _text(element, name, where)
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UserError(f"{where}/{name}: expected a positive whole number of pixels, got {text!r}")
    return int(text)


def _flag(element: Element, name: str, where: str) -> bool:
    child = element.find(name)
    text = "0" if child is None else (child.text or "").strip()
    if text not in ("0", "1"):
        raise UserError(f"{where}/{name}: expected 0 or 1, got {text!r}")
    return text == "1"


def _read_annotation(root: Path, image_id: str, class_index: dict[str, int]) -> DetectionImage:
    path = root / "Annotations" / f"{image_id}.xml"
    annotation = parse_xml(path)
    where = f"{path}: annotation"
    if annotation.tag != "annotation":
        raise UserError(f"{path}: the root element is <{annotation.tag}>, expected <annotation>")
    filename = annotation.find("filename")
    if filename is not None and (filename.text or "").strip():
        file = check_relative_path(filename.text.strip(), f"{where}/filename", plain_name=True)
    else:
        file = f"{image_id}.jpg"
    size = _child(annotation, "size", where)
    width, height = _size(size, "width", f"{where}/size"), _size(size, "height", f"{where}/size")
    check_image_file(root / "JPEGImages" / file, width, height, f"{where}/size")
    boxes, labels, difficult = [], [], []
    for number, element in enumerate(annotation.findall("object"), start=1):
        at = f"{where}/object[{number}]"
        name = _text(element, "name", at)
        if name not in class_index:
            raise UserError(
                f"{at}/name: unknown class {name!r} (classes: {', '.join(class_index)}; a data set of other "
                f"classes names them in {root / CLASSES_FILE}, one a line)"
            )
        box = _child(element, "bndbox", at)
        xmin, ymin, xmax, ymax = (
            _number(box, key, f"{at}/bndbox") for key in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append(
            check_box(
                xmin - 1, ymin - 1, xmax, ymax, width, height,
                f"{at}/bndbox (xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g})",
            )
        )  # fmt: skip
        labels.append(class_index[name])
        difficult.append(_flag(element, "difficult", at))
    return make_image(image_id, file, width, height, boxes, labels, difficult=difficult, source=str(path))
