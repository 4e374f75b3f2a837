"""``shapes``: the same pixels and boxes every time and on every machine (pinned digests), boxes inside their
images and tight around their objects, sizes as documented."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from acp.detection_data import SHAPES_CLASSES, generate_shapes, load_detection_data
from acp.detection_data.shapes import SHAPES_IMAGES, SHAPES_SIZE
from acp.errors import UserError

# Recorded from the integer generator; a different value on another machine or numpy/torch/Pillow version is
# a determinism bug, not a reason to re-record.
FIRST_IMAGE_SHA256 = "686db17e880e708e7565b88d18288d3c59d57136a65f361b8f9b436a9e76994e"
ALL_PIXELS_SHA256 = "0c6b742d03a83ee0b69bab7a376575b0b28783e071815df387b297f51e46e66a"
ANNOTATIONS_SHA256 = "6dea637494a3da3752af36ea932c9bce7f359e12e1de8276f5b7d93666e80085"


def _digest(data) -> str:
    digest = hashlib.sha256(data.pixels.tobytes())
    for image in data.images:
        digest.update(image.boxes.tobytes())
        digest.update(image.labels.tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def shapes():
    return load_detection_data("shapes")


def test_default_set_is_pinned(shapes):
    assert len(shapes) == SHAPES_IMAGES == 512 and shapes.pixels.shape == (512, 128, 128, 3)
    assert shapes.classes == SHAPES_CLASSES == ("__background__", "rectangle", "ellipse", "triangle")
    assert shapes.num_classes == 4 and shapes.spec == "shapes" and shapes.format == "shapes"
    assert hashlib.sha256(shapes.pixels.tobytes()).hexdigest() == ALL_PIXELS_SHA256
    assert shapes.annotations_sha256() == ANNOTATIONS_SHA256
    first = shapes.images[0]
    digest = hashlib.sha256(shapes.pixels[0].tobytes())
    digest.update(first.boxes.tobytes())
    digest.update(first.labels.tobytes())
    assert digest.hexdigest() == FIRST_IMAGE_SHA256
    assert first.boxes.tolist() == [[7, 58, 35, 113], [57, 63, 110, 109], [39, 20, 94, 54]]
    assert first.labels.tolist() == [3, 3, 1]


def test_two_generations_are_identical():
    first, second = load_detection_data("shapes:32"), load_detection_data("shapes:32")
    assert _digest(first) == _digest(second)
    assert first.annotations_sha256() == second.annotations_sha256()
    # an image depends on its index, not on how many are generated
    assert np.array_equal(generate_shapes(3, 48).pixels, generate_shapes(5, 48).pixels[:3])
    assert _digest(generate_shapes(3, 48, seed=1)) != _digest(generate_shapes(3, 48))


def test_boxes_are_inside_tight_and_separate(shapes):
    counts = np.zeros(5, dtype=int)
    for index, image in enumerate(shapes.images):
        assert 1 <= len(image.labels) <= 4 and set(image.labels.tolist()) <= {1, 2, 3}
        counts[len(image.labels)] += 1
        boxes = image.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= SHAPES_SIZE).all() and (boxes[:, 3] <= SHAPES_SIZE).all()
        assert (boxes[:, 2] - boxes[:, 0] >= SHAPES_SIZE // 8).all()
        assert (boxes == boxes.round()).all()  # whole pixels
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = boxes[a], boxes[b]
                assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1, f"image {index} boxes overlap"
        # a rectangle fills its box with one colour (+-12 noise); the ring just outside is background
        pixels = shapes.pixels[index].astype(int)
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), image.labels):
            if label == 1:
                inside = pixels[y1:y2, x1:x2].reshape(-1, 3)
                assert (inside.max(axis=0) - inside.min(axis=0) <= 24).all()
    assert counts[1:].min() > 50  # every count of objects is common
    assert (shapes.object_counts()[1:] > 300).all()  # the three classes are balanced


def test_tensors_for_a_detector(shapes):
    image, target = shapes.sample(0)
    assert image.shape == (3, 128, 128) and image.min() >= 0 and image.max() <= 1
    assert target["boxes"].shape == (3, 4) and target["labels"].tolist() == [3, 3, 1]


@pytest.mark.parametrize("spec", ["shapes:16", "shapes:1000", "shapes:x", "shapes:-64", "shapes:²"])
def test_bad_shapes_specs(spec):
    with pytest.raises(UserError, match=r"SIZE must be an integer in \[32, 256\], e.g. shapes:64"):
        load_detection_data(spec)
