"""Training and finetuning a torchvision detector: the loss falls, a resumed run is bit-identical to an
uninterrupted one, and a finetuned detector directory loads into the same detector."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import acp
from acp.core.architecture import Architecture, ModelIdentity
from acp.data import load_data, make_splits
from acp.detection_data import load_shapes, make_detection_splits
from acp.errors import UserError
from acp.models import create_model
from acp.proxy.detection_score import score_detector
from acp.prune import build_space
from acp.settings import Schedule
from acp.train.detection_loop import flip_horizontally, train_detector
from acp.train.finetune import finetune_model, summary_rows

pytest.importorskip("torchmetrics.detection")

# SSDlite at half width, 4 outputs (shapes' 3 classes + background): the fastest detector acp traces
IDENTITY = ModelIdentity("ssdlite320_mobilenet_v3_large", 4, (3, 320, 320), {"width_mult": 0.5})
# 33 training images at batch 8: 4 steps an epoch, the last of 9 images (a lone 33rd joins the batch before)
SCHEDULE = Schedule(epochs=3, batch_size=8, lr=0.05, schedule="onecycle", seed=3, augment=True)


@pytest.fixture(scope="module")
def shapes():
    """The first 49 images of shapes:64: 33 to train on, the last 16 to validate on."""
    data = load_shapes("shapes:64")
    tiny = dataclasses.replace(data, images=data.images[:49], pixels=data.pixels[:49])
    splits = make_detection_splits(tiny, "tail:16")
    assert np.array_equal(splits.train, np.arange(33)) and np.array_equal(splits.val, np.arange(33, 49))
    return tiny, splits


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model, space = build_space(IDENTITY)
    return model, space


@pytest.fixture(scope="module")
def straight(shapes, detector, tmp_path_factory):
    """Three uninterrupted epochs from the random initialization."""
    data, splits = shapes
    model = copy.deepcopy(detector[0])
    out_dir = tmp_path_factory.mktemp("straight")
    history = train_detector(
        model,
        data,
        splits.train,
        splits.val,
        out_dir=out_dir,
        schedule=SCHEDULE,
        score_detector=score_detector,
        progress=False,
    )
    return model, history, out_dir


def test_training_lowers_the_loss_and_records_each_epoch(straight):
    model, history, out_dir = straight
    assert [record.epoch for record in history] == [1, 2, 3]
    losses = [record.train_loss for record in history]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 0.8 * losses[0]  # seed 3: 10.0, 8.7, 7.1
    assert all(0 <= record.val_score <= 1 for record in history)
    assert not model.training
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["metric"] == "map50" and metrics["final"]["val_map50"] == history[-1].val_score
    assert [epoch["train_loss"] for epoch in metrics["epochs"]] == [r.train_loss for r in history]
    weights = torch.load(out_dir / "weights.pt", weights_only=True)
    assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())


def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(shapes, detector, straight, tmp_path):
    data, splits = shapes
    straight_model, straight_history, _ = straight

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    with pytest.raises(Stop):  # a crash right after epoch 1's checkpoint; the resumed run trains 2 and 3
        train_detector(
            copy.deepcopy(detector[0]),
            data,
            splits.train,
            splits.val,
            out_dir=tmp_path,
            schedule=SCHEDULE,
            score_detector=score_detector,
            progress=False,
            on_epoch=stop,
        )
    torch.manual_seed(123)
    resumed = create_model(IDENTITY.name, 4, width_mult=0.5)  # another init: all from the checkpoint
    history = train_detector(
        resumed,
        data,
        splits.train,
        splits.val,
        out_dir=tmp_path,
        schedule=SCHEDULE,
        score_detector=score_detector,
        resume=True,
        progress=False,
    )

    def without_seconds(records):
        return [(r.epoch, r.train_loss, r.val_score, r.lr) for r in records]

    assert without_seconds(history) == without_seconds(straight_history)
    expected = straight_model.state_dict()
    for key, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_resume_refuses_another_metric_or_recipe(shapes, detector, straight):
    data, splits = shapes
    out_dir = straight[2]
    for changes, message in (
        ({"metric": "map"}, "validated by 'map50', now 'map'"),
        ({"schedule": SCHEDULE.replace(lr=0.1)}, "setting lr was 0.05, now 0.1"),
    ):
        arguments = {"schedule": SCHEDULE, "metric": "map50", **changes}
        with pytest.raises(UserError, match=message):
            train_detector(
                copy.deepcopy(detector[0]),
                data,
                splits.train,
                splits.val,
                out_dir=out_dir,
                score_detector=score_detector,
                resume=True,
                progress=False,
                **arguments,
            )


def test_a_batch_of_one_image_is_a_user_error_for_ssd(shapes, detector, tmp_path):
    data, splits = shapes
    with pytest.raises(UserError, match="cannot train on batches of one image"):
        train_detector(
            copy.deepcopy(detector[0]),
            data,
            splits.train,
            splits.val,
            out_dir=tmp_path,
            schedule=SCHEDULE.replace(batch_size=1),
            score_detector=score_detector,
            progress=False,
        )


def test_flipping_mirrors_images_and_boxes():
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(3, 2, 5) / 30
    target = {"boxes": torch.tensor([[1.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1])}
    images, targets = flip_horizontally([image, image], [target, target], torch.tensor([True, False]))
    assert torch.equal(images[0], image.flip(-1)) and images[1] is image
    assert targets[0]["boxes"].tolist() == [[3.0, 0.0, 4.0, 2.0]] and targets[1] is target
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 0.0, 2.0, 2.0]]))  # the input is untouched
    # the mirrored box covers the mirrored pixels
    mask = torch.zeros(2, 5)
    mask[0:2, 1:2] = 1
    x1, _, x2, _ = (int(v) for v in targets[0]["boxes"][0])
    assert mask.flip(-1)[:, x1:x2].sum() == mask.sum()


def half_width_architecture(space) -> Architecture:
    widths = space.uniform_widths(0.5)
    keep = {group.id: list(range(int(width))) for group, width in zip(space.groups, widths)}
    return Architecture.from_widths(
        space, IDENTITY, widths, keep, space_settings=space.settings, provenance={"source": "uniform"}
    )


def finetune_half_width(shapes, detector, base, out_dir, *, epochs: int = 1, resume: bool = False):
    data, splits = shapes
    space = detector[1]
    return finetune_model(
        half_width_architecture(space),
        base,
        space,
        data,
        splits,
        out_dir=out_dir,
        schedule=SCHEDULE.replace(epochs=epochs),
        score_detector=score_detector,
        resume=resume,
        progress=False,
        provenance={"data": data.spec},
    )


@pytest.fixture(scope="module")
def finetuned(shapes, detector, straight, tmp_path_factory):
    """The half-width detector finetuned for one epoch from the three-epoch detector as its base."""
    out_dir = tmp_path_factory.mktemp("finetuned") / "ft"
    return finetune_half_width(shapes, detector, straight[0], out_dir)


def test_finetuning_a_detector_writes_a_directory_that_loads_into_the_same_detector(shapes, finetuned):
    data, splits = shapes
    out_dir, arch = finetuned.out_dir, finetuned.arch
    for name in ("arch.json", "weights.pt", "metrics.json", "checkpoint.pt", "training_curve.png"):
        assert (out_dir / name).is_file(), name
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == {**metrics, **finetuned.metrics}
    for key in ("base_map50", "map50_before", "map50_after"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["map50_after"] == metrics["final"]["val_map50"] == metrics["epochs"][-1]["val_score"]
    assert (metrics["macs"], metrics["params"]) == (arch.macs, arch.params)
    assert metrics["macs_ratio"] == pytest.approx(arch.macs / arch.base_macs) and metrics["macs_ratio"] < 0.6
    assert set(metrics["latency_cpu"]) == {"batch1"} and metrics["latency_cpu"]["batch1"]["pruned_ms"] > 0
    assert metrics["epochs_trained"] == 1 and metrics["data"] == data.spec
    assert summary_rows(metrics)[1][0] == "val mAP@0.5"

    loaded = acp.load_pruned(out_dir).eval()
    image = data.sample(int(splits.val[0]))[0]
    with torch.no_grad():
        expected, got = finetuned.model.eval()([image])[0], loaded([image])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[key], expected[key]), key


def test_a_resumed_finetune_trains_on_and_keeps_its_before_metrics(
    shapes, detector, straight, finetuned, tmp_path
):
    out_dir = tmp_path / "ft"
    shutil.copytree(finetuned.out_dir, out_dir)
    resumed = finetune_half_width(shapes, detector, straight[0], out_dir, epochs=2, resume=True)
    assert resumed.metrics["epochs_trained"] == 2
    for key in ("base_map50", "map50_before", "latency_cpu"):
        assert resumed.metrics[key] == finetuned.metrics[key], key
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert [epoch["epoch"] for epoch in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][0] == json.loads((finetuned.out_dir / "metrics.json").read_text())["epochs"][0]


def test_finetune_refuses_a_detector_with_classification_data_and_distillation(shapes, detector, tmp_path):
    model, space = detector
    arch = half_width_architecture(space)
    digits = load_data("digits:16")
    with pytest.raises(UserError, match="the model is a box detector, but data digits:16 is classification"):
        finetune_model(
            arch, model, space, digits, make_splits(digits, "auto"), out_dir=tmp_path / "a", schedule=SCHEDULE
        )
    data, splits = shapes
    with pytest.raises(UserError, match="distillation .* not implemented for detectors"):
        finetune_model(
            arch,
            model,
            space,
            data,
            splits,
            out_dir=tmp_path / "b",
            schedule=SCHEDULE,
            score_detector=score_detector,
            distill=True,
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_classifier_does_not_resume_from_a_detectors_checkpoint(tmp_path):
    from acp.train import loop

    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "model": {}, "optimizer": {}, "schedule": {}, "task": "detection"}, path)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="it is a detection training checkpoint, not a classifier's"):
        loop._restore(path, model, optimizer, Schedule(epochs=1))


def test_summary_says_slower_when_the_pruned_model_is_slower():
    from acp.train.finetune import summary_rows

    metrics = {
        **{"base_map50": 0.95, "map50_after": 0.95, "map50_before": 0.01, "base_macs": 10, "macs": 5},
        **{"macs_ratio": 0.5, "base_params": 10, "params": 5, "params_ratio": 0.5},
        "latency_cpu": {"batch1": {"base_ms": 68.0, "pruned_ms": 77.0, "speedup": 68.0 / 77.0}},
    }
    assert summary_rows(metrics)[-1] == ("latency batch 1", "68.00 ms", "77.00 ms (1.13x slower)")
    metrics["latency_cpu"]["batch1"].update(pruned_ms=34.0, speedup=2.0)
    assert summary_rows(metrics)[-1][2] == "34.00 ms (2.00x faster)"
