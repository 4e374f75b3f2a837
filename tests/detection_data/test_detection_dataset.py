"""The accessor: float CHW / uint8 HWC images and {boxes, labels} targets a torchvision detector trains on,
through a DataLoader or a seeded batch iterator; the representation refuses inconsistent contents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acp.detection_data import (
    DetectionData,
    DetectionDataset,
    collate_detection,
    generate_shapes,
    iterate_detection_batches,
)
from acp.detection_data.dataset import make_image
from acp.errors import UserError


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(10, 64)


def test_dataloader_yields_lists_of_images_and_targets(shapes):
    loader = torch.utils.data.DataLoader(
        DetectionDataset(shapes, [4, 1, 7]), batch_size=2, collate_fn=collate_detection
    )
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 1]
    images, targets = batches[0]
    assert images[0].shape == (3, 64, 64) and images[0].dtype == torch.float32
    assert torch.equal(images[0], torch.from_numpy(shapes.pixels[4]).permute(2, 0, 1).float() / 255)
    assert targets[1]["boxes"].tolist() == shapes.images[1].boxes.tolist()
    assert targets[1]["labels"].dtype == torch.int64 and set(targets[0]) == {"boxes", "labels"}
    raw, _ = DetectionDataset(shapes, float_chw=False)[2]
    assert raw.dtype == torch.uint8 and torch.equal(raw, torch.from_numpy(shapes.pixels[2]))


def test_seeded_batches(shapes):
    def order(seed):
        batches = iterate_detection_batches(
            shapes,
            np.arange(10),
            4,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            drop_last=True,
        )
        return [[target["boxes"].sum().item() for target in targets] for _, targets in batches]

    assert order(0) == order(0) and order(0) != order(1) and [len(batch) for batch in order(0)] == [4, 4]
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        next(iterate_detection_batches(shapes, np.arange(10), 4, shuffle=True))


def test_a_torchvision_detector_trains_on_a_batch(shapes):
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=shapes.num_classes)
    images, targets = next(iterate_detection_batches(shapes, [0, 1], 2))
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_inconsistent_contents_are_refused():
    image = make_image("0", "", 8, 8, [[0, 0, 4, 4]], [1])
    pixels = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(UserError, match="classes must start with '__background__'"):
        DetectionData("d", "shapes", ("a", "b"), [image], pixels=pixels)
    with pytest.raises(UserError, match="duplicate class names"):
        DetectionData("d", "shapes", ("__background__", "a", "a"), [image], pixels=pixels)
    with pytest.raises(UserError, match=r"label outside 1..0"):
        DetectionData("d", "shapes", ("__background__",), [image], pixels=pixels)
    with pytest.raises(UserError, match="2 pixel arrays for 1 images"):
        DetectionData(
            "d", "shapes", ("__background__", "a"), [image], pixels=np.zeros((2, 8, 8, 3), np.uint8)
        )
    for box in ([0, 0, 9, 4], [3, 0, 3, 4], [-1, 0, 2, 2]):
        bad = make_image("0", "", 8, 8, [box], [1], source="made here")
        with pytest.raises(UserError, match=r"made here: box .* is empty or outside its 8x8 image"):
            DetectionData("d", "shapes", ("__background__", "a"), [bad], pixels=pixels)
    with pytest.raises(UserError, match="no images"):
        DetectionData("d", "shapes", ("__background__", "a"), [])


def test_detection_specs_are_recognized(tmp_path):
    from detection_fixtures import make_coco_tree, make_voc_tree

    from acp.detection_data import is_detection_spec

    voc_root, _ = make_voc_tree(tmp_path / "voc")
    coco_root, _, _ = make_coco_tree(tmp_path)
    for spec in (
        "shapes",
        "shapes:64",
        str(voc_root),
        f"{voc_root}#val",
        str(coco_root),
        str(coco_root / "instances.json"),
    ):
        assert is_detection_spec(spec), spec
    for spec in ("digits", "digits:16", str(tmp_path / "missing"), str(coco_root / "images")):
        assert not is_detection_spec(spec), spec
