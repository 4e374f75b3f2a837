"""Tiny hand-made VOC and COCO data sets (PNG images with known pixels, XML / JSON written here) and a way to
run a loader through ``acp.cli.main``'s error handling. Plain functions, not a conftest: ``from conftest
import`` elsewhere must keep finding tests/conftest.py."""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path

import numpy as np

VOC_OBJECT = """  <object>
    <name>{name}</name>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
  </object>
"""
VOC_ANNOTATION = """<annotation>
  <folder>VOC2007</folder>
  {filename}
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
{objects}</annotation>
"""
# (id, image file or None for <id>.jpg, width, height, objects as (name, difficult, xmin, ymin, xmax, ymax))
VOC_IMAGES = [
    ("000001", None, 40, 30, [("dog", 0, 1, 1, 40, 30), ("cat", 1, 5, 6, 20, 18)]),
    ("000002", "000002.png", 24, 32, [("cat", 0, 3, 4, 10, 12)]),
    ("000003", None, 16, 16, [("dog", 0, 2, 2, 9, 9)]),
    ("000004", None, 20, 12, []),
]


def write_png(path: Path, width: int, height: int, seed: int) -> np.ndarray:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")  # lossless, also under a .jpg name
    return pixels


def voc_xml(image_id, file, width, height, objects) -> str:
    return VOC_ANNOTATION.format(
        filename=f"<filename>{file}</filename>" if file else "",
        width=width,
        height=height,
        objects="".join(
            VOC_OBJECT.format(name=n, difficult=d, xmin=x1, ymin=y1, xmax=x2, ymax=y2)
            for n, d, x1, y1, x2, y2 in objects
        ),
    )


def make_voc_tree(tmp_path: Path) -> tuple[Path, dict]:
    """A VOC tree of ``VOC_IMAGES`` with classes.txt (cat, dog) and the image sets trainval/train/val;
    returns (root, {id: pixels})."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    pixels = {}
    for seed, (image_id, file, width, height, objects) in enumerate(VOC_IMAGES):
        pixels[image_id] = write_png(root / "JPEGImages" / (file or f"{image_id}.jpg"), width, height, seed)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, file, width, height, objects))
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    (lists / "trainval.txt").write_text("000001\n000002\n000003\n000004\n")
    (lists / "train.txt").write_text("000001\n000003\n")
    (lists / "val.txt").write_text("000002\n000004\n")
    (lists / "dog_val.txt").write_text("000002 -1\n000004 -1\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root, pixels


def coco_document() -> dict:
    """Two categories with a gap in their ids, three images listed out of id order, a crowd box."""
    return {
        "info": {"description": "tiny"},
        "categories": [{"id": 7, "name": "square"}, {"id": 3, "name": "circle"}],
        "images": [
            {"id": 20, "file_name": "b.png", "width": 24, "height": 16},
            {"id": 10, "file_name": "a.png", "width": 32, "height": 24},
            {"id": 30, "file_name": "sub/c.png", "width": 8, "height": 8},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [0, 0, 32, 24], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [2.5, 3, 4, 5.5], "iscrowd": 1},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [1, 1, 10, 10]},
        ],
    }


def make_coco_tree(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A COCO folder (instances.json + images/); returns (root, document, {file: pixels})."""
    root = tmp_path / "coco"
    document = coco_document()
    pixels = {}
    for seed, entry in enumerate(document["images"]):
        name = entry["file_name"]
        pixels[name] = write_png(root / "images" / name, entry["width"], entry["height"], seed)
    (root / "instances.json").write_text(json.dumps(document))
    return root, document, pixels


def run_cli(spec: str, monkeypatch, capsys) -> tuple[int, str]:
    """(exit code, stderr) of loading ``spec`` as a command handler of ``acp.cli.main``, so a UserError goes
    through the command's own mapping (one line, exit 2)."""
    cli_main = importlib.import_module("acp.cli.main")  # the module (acp.cli.main is also the function)
    from acp.detection_data import load_detection_data

    def register(commands):
        command = commands.add_parser("load-detection")
        command.add_argument("spec")
        command.set_defaults(handler=lambda args: 0 if load_detection_data(args.spec) else 1)

    with monkeypatch.context() as patch:
        patch.setattr(cli_main, "COMMANDS", (types.SimpleNamespace(register=register),))
        code = cli_main.main(["load-detection", spec])
    return code, capsys.readouterr().err
