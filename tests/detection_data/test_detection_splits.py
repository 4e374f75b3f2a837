"""Detection splits: deterministic from their seed, in classification's vocabulary, recorded as data, and
refused when nothing could be learnt or measured on them."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from detection_fixtures import make_voc_tree

from acp.detection_data import (
    DetectionData,
    describe_detection_data,
    generate_shapes,
    load_voc,
    make_detection_splits,
)
from acp.detection_data.dataset import make_image
from acp.errors import UserError


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(200, 32)


def test_random_split_is_deterministic_and_recorded(shapes):
    first = make_detection_splits(shapes, "random:0.25", seed=3)
    again = make_detection_splits(generate_shapes(200, 32), "random:0.25", seed=3)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)
    assert first.describe() == again.describe()
    other = make_detection_splits(shapes, "random:0.25", seed=4)
    assert not np.array_equal(first.val, other.val)
    assert len(first.val) == 50 and len(first.train) == 150
    assert np.array_equal(np.sort(np.concatenate([first.train, first.val])), np.arange(200))
    record = describe_detection_data(shapes, first)
    assert json.loads(json.dumps(record)) == record  # plain data a run can write down
    assert record["split"] == {**first.describe(), "method": "random:0.25", "seed": 3}
    assert record["classes"] == ["__background__", "rectangle", "ellipse", "triangle"]
    assert record["annotations_sha256"] == shapes.annotations_sha256()
    auto = make_detection_splits(shapes, seed=3)
    assert auto.method == "random:0.1" and len(auto.val) == 20


def test_tail_and_voc_image_set(tmp_path, shapes):
    tail = make_detection_splits(shapes, "tail:10")
    assert tail.val.tolist() == list(range(190, 200)) and len(tail.train) == 190
    root, _ = make_voc_tree(tmp_path)
    voc = load_voc(root)
    by_list = make_detection_splits(voc, "imageset:val")
    assert [voc.images[i].image_id for i in by_list.val] == ["000002", "000004"]
    assert [voc.images[i].image_id for i in by_list.train] == ["000001", "000003"]


def _tiny(labels_per_image) -> DetectionData:
    images = [
        make_image(str(i), "", 8, 8, [[0, 0, 4, 4]] * len(labels), labels)
        for i, labels in enumerate(labels_per_image)
    ]
    return DetectionData(
        "tiny",
        "shapes",
        ("__background__", "a", "b", "c"),
        images,
        pixels=np.zeros((len(images), 8, 8, 3), np.uint8),
    )


@pytest.mark.parametrize(
    "method, message",
    [
        ("bogus", "unknown split 'bogus': use 'random:F', 'tail:K' or 'imageset:NAME'"),
        ("random:0", r"random:F needs a fraction 0 < F < 1"),
        ("random:x", r"random:F needs a fraction 0 < F < 1"),
        ("tail:0", r"tail:K needs a whole number 1 <= K < 4"),
        ("tail:4", r"tail:K needs a whole number 1 <= K < 4"),
        ("imageset:val", "imageset:NAME needs a VOC data set, not shapes data tiny"),
        ("tail:2", r"no training image has an object of class 'b'"),
        ("random:0.01", "the validation split is empty"),
    ],
)
def test_bad_splits_are_user_errors(method, message):
    with pytest.raises(UserError, match=message):
        make_detection_splits(_tiny([[1], [1], [2], [2, 1]]), method)


def test_imageset_errors_and_warnings(tmp_path, caplog):
    root, _ = make_voc_tree(tmp_path)
    voc = load_voc(root)
    with pytest.raises(UserError, match=r"imageset:nope.*nope.txt not found"):
        make_detection_splits(voc, "imageset:nope")
    with pytest.raises(UserError, match="NAME must be a plain image set name"):
        make_detection_splits(voc, "imageset:../x")
    with caplog.at_level(logging.WARNING):
        make_detection_splits(_tiny([[1], [1, 2], [1, 2]]), "tail:1")
    assert "has no object of class c" in caplog.text and "only 1 validation images" in caplog.text
