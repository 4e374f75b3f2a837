"""Small data sets: every training image is used in every epoch, and a split too small is said out loud.

The issue's case: 216 training images at the default batch 128 used to be one step on 128 of them per
epoch (the last partial batch was dropped), three epochs ending at chance without a word.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from acp.data import ImageData, make_splits
from acp.errors import UserError
from acp.settings import Schedule
from acp.train.loop import steps_per_epoch, train

CLASSES = ["a", "b", "c"]


def indexed_data(count: int, classes=CLASSES) -> ImageData:
    """Images whose first two pixels spell their own index (mean 0, std 1: the values survive)."""
    images = np.zeros((count, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(count) % 256
    images[:, 0, 1, 0] = np.arange(count) // 256
    labels = np.arange(count) % len(classes)
    return ImageData(images, labels.astype(np.int64), list(classes), "indexed", mean=(0, 0, 0), std=(1, 1, 1))


class Recorder(nn.Module):
    """Reads back which images each training batch holds."""

    def __init__(self):
        super().__init__()
        self.batches: list[list[int]] = []

    def forward(self, images):
        if self.training:
            pixels = (images[:, 0, 0, :2] * 255).round().long()
            self.batches.append((pixels[:, 0] + 256 * pixels[:, 1]).tolist())
        return images


def recording_model(classes: int = 3) -> tuple[nn.Module, Recorder]:
    torch.manual_seed(0)
    recorder = Recorder()
    # BatchNorm1d after pooling: a training batch of one image would raise in it
    model = nn.Sequential(
        recorder,
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(8),
        nn.Linear(8, classes),
    )
    return model, recorder


def schedule(**changes) -> Schedule:
    return Schedule(**{"epochs": 3, "batch_size": 128, "lr": 0.05, "augment": False, "seed": 0, **changes})


def epochs_of(recorder: Recorder, steps: int) -> list[list[list[int]]]:
    return [recorder.batches[start : start + steps] for start in range(0, len(recorder.batches), steps)]


def test_216_images_are_all_used_in_every_epoch(tmp_path):
    data = indexed_data(240)
    train_indices, val_indices = np.arange(216), np.arange(216, 240)
    model, recorder = recording_model()
    history = train(model, data, train_indices, val_indices, schedule(), tmp_path, progress=False)
    assert len(history) == 3
    assert len(recorder.batches) == 3 * 2  # two steps per epoch: 128 + 88
    for epoch in epochs_of(recorder, 2):
        assert [len(batch) for batch in epoch] == [128, 88]
        assert sorted(index for batch in epoch for index in batch) == list(range(216))
    assert epochs_of(recorder, 2)[0] != epochs_of(recorder, 2)[1]  # reshuffled each epoch


@pytest.mark.parametrize(
    "images, batch_size, sizes",
    [
        (129, 128, [129]),  # a lone last image joins the batch before it
        (257, 128, [128, 129]),
        (256, 128, [128, 128]),
        (50, 128, [50]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_no_training_batch_of_one_image(tmp_path, images, batch_size, sizes):
    data = indexed_data(images + 30)
    model, recorder = recording_model()
    if batch_size == 1:  # batch 1 is what the user asked for: BatchNorm1d cannot take it, a plain model can
        model = nn.Sequential(recorder, nn.Flatten(), nn.Linear(48, 3))
    run = schedule(epochs=1, batch_size=batch_size)
    train(model, data, np.arange(images), np.arange(images, images + 30), run, tmp_path, progress=False)
    assert [len(batch) for batch in recorder.batches] == sizes
    assert sorted(index for batch in recorder.batches for index in batch) == list(range(images))
    assert steps_per_epoch(images, batch_size) == len(sizes)


def test_same_seed_same_weights_and_resume_is_bit_exact_with_partial_batches(tmp_path):
    data = indexed_data(300)
    train_indices, val_indices = np.arange(257), np.arange(257, 300)  # 128 + 129 per epoch

    def weights(model):
        return {key: value.clone() for key, value in model.state_dict().items()}

    straight, _ = recording_model()
    train(straight, data, train_indices, val_indices, schedule(epochs=2), tmp_path / "a", progress=False)
    again, _ = recording_model()
    train(again, data, train_indices, val_indices, schedule(epochs=2), tmp_path / "b", progress=False)

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    interrupted, _ = recording_model()
    with pytest.raises(Stop):
        train(
            interrupted, data, train_indices, val_indices, schedule(epochs=2), tmp_path / "d", on_epoch=stop
        )
    resumed, _ = recording_model()
    train(
        resumed,
        data,
        train_indices,
        val_indices,
        schedule(epochs=2),
        tmp_path / "d",
        resume=True,
        progress=False,
    )
    for key, value in weights(straight).items():
        assert torch.equal(value, again.state_dict()[key]), key
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_a_split_too_small_for_the_batch_size_is_said(tmp_path, caplog):
    data = indexed_data(240)
    model, _ = recording_model()
    with caplog.at_level(logging.WARNING, logger="acp.train.loop"):
        train(model, data, np.arange(216), np.arange(216, 240), schedule(), tmp_path, progress=False)
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "only 216 training images: 2 optimizer step(s) per epoch at batch size 128, 6 in all" in message
    caplog.clear()
    model, _ = recording_model()
    with caplog.at_level(logging.WARNING, logger="acp.train.loop"):
        train(
            model,
            data,
            np.arange(216),
            np.arange(216, 240),
            schedule(batch_size=16),
            tmp_path / "b",
            progress=False,
        )
    assert not [record for record in caplog.records if "optimizer step" in record.getMessage()]


# ------------------------------------------------------------------------------ the split layer


def test_an_empty_validation_split_is_a_user_error():
    data = indexed_data(12)  # 4 images per class: random:0.1 holds out round(0.4) = 0 of each
    with pytest.raises(UserError, match=r"split 'random:0.1' of data indexed \(12 images, 3 classes\): the "):
        make_splits(data, "random:0.1")
    with pytest.raises(UserError, match="validation split is empty"):
        make_splits(data, "random:0.1")


def test_a_class_without_training_images_is_a_user_error():
    data = indexed_data(7)  # classes a, b, c hold 3, 2, 2 images; random:0.8 holds out all of b and c
    with pytest.raises(
        UserError, match=r"class 'b' has no training image \(its 2 went to validation\), nor do 1"
    ):
        make_splits(data, "random:0.8")


def test_a_small_validation_split_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="acp.data"):
        splits = make_splits(indexed_data(240), "random:0.1")
    assert len(splits.val) == 24
    assert (
        "only 24 validation images (216 training): one image moves validation accuracy by 4.2%" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acp.data"):
        make_splits(indexed_data(1200), "random:0.1")
    assert caplog.text == ""


def test_the_cli_trains_on_every_image_of_a_small_folder(tmp_path):
    """``acp train`` on 240 images (216 training), a real process: both warnings reach the terminal."""
    import json
    import os
    import subprocess
    import sys

    from conftest import write_image_folder

    write_image_folder(tmp_path / "images", per_class=80, size=8)
    argv = ["train", "--model", "resnet8_cifar", "--data", str(tmp_path / "images"), "--epochs", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "acp", *argv, "--quiet", "--no-augment", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "only 216 training images: 2 optimizer step(s) per epoch at batch size 128, 2 in all" in result.stderr
    )
    assert "only 24 validation images (216 training)" in result.stderr
    assert json.loads((tmp_path / "run" / "data.json").read_text())["split"]["train_size"] == 216
