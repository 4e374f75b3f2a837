"""COCO JSON: a hand-made instances file reads back exactly; every bad key, type, id, reference and box is a
UserError naming the file and the field."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from detection_fixtures import make_coco_tree, run_cli

from acp.detection_data import load_coco, load_detection_data
from acp.errors import UserError


def test_coco_round_trip(tmp_path):
    root, _, pixels = make_coco_tree(tmp_path)
    data = load_detection_data(str(root))
    assert data.format == "coco" and data.classes == ("__background__", "circle", "square")
    assert data.category_ids == (3, 7)  # labels 1, 2 in increasing category id
    assert [image.image_id for image in data.images] == ["10", "20", "30"]  # id order, not file order
    first, second, third = data.images
    assert first.file == "a.png" and (first.width, first.height) == (32, 24)
    assert first.boxes.tolist() == [[0, 0, 32, 24], [2.5, 3, 6.5, 8.5]]  # [x, y, w, h] -> x1 y1 x2 y2
    assert first.labels.tolist() == [2, 1] and first.crowd.tolist() == [False, True]
    assert second.labels.tolist() == [1] and len(third.labels) == 0 and third.file == "sub/c.png"
    for index, image in enumerate(data.images):
        assert np.array_equal(data.image(index), pixels[image.file])
    _, target = data.sample(0)
    assert target["labels"].tolist() == [2]  # the crowd box is not a training target
    _, everything = data.sample(0, with_ignored=True)
    assert everything["iscrowd"].tolist() == [0, 1]
    # the same file named directly, its images/ folder found next to it
    direct = load_detection_data(str(root / "instances.json"))
    assert direct.annotations_sha256() == data.annotations_sha256()


def test_file_order_does_not_change_the_data(tmp_path):
    root, document, _ = make_coco_tree(tmp_path)
    document["images"].reverse()
    document["annotations"].reverse()
    (root / "other.json").write_text(json.dumps(document))
    reordered = load_coco(root / "other.json", image_dir=root / "images")
    original = load_coco(root / "instances.json")
    assert [image.image_id for image in reordered.images] == [image.image_id for image in original.images]
    assert reordered.images[1].boxes.tolist() == original.images[1].boxes.tolist()


def _set(path, value):
    """Edit: ``document[path...] = value`` (value ``DELETE`` removes the key)."""

    def edit(document):
        *parents, last = path
        target = document
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value

    return edit


DELETE = object()
BAD_DOCUMENTS = {
    "missing annotations": (_set(["annotations"], DELETE), r"instances.json: missing key 'annotations'"),
    "images not a list": (_set(["images"], {}), r"instances.json: 'images' must be a list, got dict"),
    "entry not an object": (_set(["images", 0], 5), r"instances.json: images\[0\] must be an object"),
    "category id a string": (
        _set(["categories", 0, "id"], "7"),
        r"categories\[0\].id: expected an integer id, got '7'",
    ),
    "duplicate category id": (
        _set(["categories", 1, "id"], 7),
        r"categories\[1\].id: category id 7 appears twice",
    ),
    "duplicate category name": (
        _set(["categories", 1, "name"], "square"),
        r"categories\[1\].name: .*'square'",
    ),
    "no categories": (_set(["categories"], []), r"'categories' is empty"),
    "duplicate image id": (_set(["images", 1, "id"], 20), r"images\[1\].id: image id 20 appears twice"),
    "width a bool": (
        _set(["images", 0, "width"], True),
        r"images\[0\].width: expected a positive whole number",
    ),
    "height zero": (
        _set(["images", 0, "height"], 0),
        r"images\[0\].height: expected a positive whole number",
    ),
    "file name escaping": (
        _set(["images", 0, "file_name"], "../b.png"),
        r"images\[0\].file_name: file name '../b.png' must be a relative path inside the image folder",
    ),
    "absolute file name": (
        _set(["images", 0, "file_name"], "/etc/passwd"),
        r"images\[0\].file_name: .*relative",
    ),
    "unknown image": (
        _set(["annotations", 2, "image_id"], 99),
        r"annotations\[2\].image_id: no image has id 99",
    ),
    "unknown category": (
        _set(["annotations", 0, "category_id"], 5),
        r"annotations\[0\].category_id: unknown category 5 \(categories: \[3, 7\]\)",
    ),
    "duplicate annotation id": (
        _set(["annotations", 1, "id"], 1),
        r"annotations\[1\].id: annotation id 1 appears",
    ),
    "box outside its image": (
        _set(["annotations", 2, "bbox"], [20, 1, 10, 10]),
        r"annotations\[2\].bbox \[20, 1, 10, 10\]: box x1=20 y1=1 x2=30 y2=11 .* outside its 24x16 image",
    ),
    "empty box": (
        _set(["annotations", 2, "bbox"], [1, 1, 0, 10]),
        r"annotations\[2\].bbox .*empty box \(x2 <= x1",
    ),
    "negative height": (_set(["annotations", 2, "bbox"], [1, 5, 3, -2]), r"annotations\[2\].bbox .*y2 <= y1"),
    "three numbers": (
        _set(["annotations", 2, "bbox"], [1, 1, 3]),
        r"annotations\[2\].bbox: expected \[x, y, w",
    ),
    "number as text": (_set(["annotations", 2, "bbox"], [1, "1", 3, 3]), r"annotations\[2\].bbox: expected"),
    "missing bbox": (_set(["annotations", 2, "bbox"], DELETE), r"annotations\[2\]: missing key 'bbox'"),
    "iscrowd 2": (
        _set(["annotations", 0, "iscrowd"], 2),
        r"annotations\[0\].iscrowd: expected 0 or 1, got 2",
    ),
    "size disagrees with the image": (
        _set(["images", 1, "width"], 40),
        r"images\[1\]: says the image is 40x24, but .*a.png is 32x24",
    ),
    "missing image": (
        _set(["images", 1, "file_name"], "nope.png"),
        r"images\[1\]: image .*nope.png not found",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_bad_document_names_file_and_field(tmp_path, case, monkeypatch, capsys):
    edit, message = BAD_DOCUMENTS[case]
    root, document, _ = make_coco_tree(tmp_path)
    document = copy.deepcopy(document)
    edit(document)
    (root / "instances.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match=message):
        load_coco(root / "instances.json")
    code, stderr = run_cli(str(root), monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("acp: error: ")
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("[", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": [{"id": NaN}]}', "NaN is not a number JSON allows"),
        ("[" * 200_000 + "]" * 200_000, "is not valid JSON"),  # nesting deeper than the parser recurses
        ('{"x": 1' + "0" * 5000 + "}", "is not valid JSON"),  # an integer of 5000 digits
        (b"\xff\xfe{}", "is not valid JSON"),
    ],
    ids=["truncated", "not an object", "NaN", "deep nesting", "huge integer", "not UTF-8"],
)
def test_malformed_json_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "instances.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(
        UserError, match=rf"annotation file .*instances.json.*{message}|instances.json: {message}"
    ):
        load_coco(path)
