from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acp.data import load_data, make_splits
from acp.errors import UserError
from acp.models import create_model
from acp.train.loop import Schedule, evaluate, train


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits:16")
    return data, make_splits(data, "random:0.2", seed=0)


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet8_cifar", num_classes=10, widths=(8, 16, 16))


def test_short_training_improves_accuracy(digits, tmp_path):
    data, splits = digits
    model = small_model()
    before, _ = evaluate(model, data, splits.val)
    schedule = Schedule(epochs=3, batch_size=32, lr=0.1, seed=0, augment=False)
    history = train(model, data, splits.train, splits.val, schedule, tmp_path, progress=False)
    assert before < 0.2
    assert history[-1].val_accuracy > 0.8
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["val_accuracy"] == history[-1].val_accuracy
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(weights) == set(model.state_dict())


def test_resume_gives_identical_weights(digits, tmp_path):
    data, splits = digits
    subset = splits.train[:400]
    schedule = Schedule(epochs=2, batch_size=32, lr=0.05, seed=7, schedule="onecycle", label_smoothing=0.1)
    straight = small_model()
    train(straight, data, subset, splits.val, schedule, tmp_path / "straight", progress=False)

    interrupted = small_model()
    one_epoch = Schedule(**{**schedule.__dict__, "epochs": 2})

    # run the first epoch only, by stopping after it (as a crash would), then resume
    class Stop(Exception):
        pass

    def stop_after_first(record):
        raise Stop

    with pytest.raises(Stop):
        train(
            interrupted,
            data,
            subset,
            splits.val,
            one_epoch,
            tmp_path / "resumed",
            progress=False,
            on_epoch=stop_after_first,
        )
    resumed = small_model(seed=123)  # different init: everything must come from the checkpoint
    history = train(
        resumed, data, subset, splits.val, schedule, tmp_path / "resumed", resume=True, progress=False
    )
    assert [r.epoch for r in history] == [1, 2]
    for key, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[key]), key


def test_resume_refuses_changed_settings(digits, tmp_path):
    data, splits = digits
    schedule = Schedule(epochs=1, batch_size=64, lr=0.05)
    train(small_model(), data, splits.train[:128], splits.val[:64], schedule, tmp_path, progress=False)
    with pytest.raises(UserError, match="setting lr was 0.05, now 0.1"):
        train(
            small_model(),
            data,
            splits.train[:128],
            splits.val[:64],
            Schedule(epochs=2, batch_size=64, lr=0.1),
            tmp_path,
            resume=True,
            progress=False,
        )


def test_distillation_loss_pulls_toward_the_teacher(digits, tmp_path):
    data, splits = digits
    teacher = small_model(seed=1)
    student = small_model(seed=2)
    schedule = Schedule(epochs=1, batch_size=64, lr=0.05, distill_alpha=1.0, augment=False)
    images, _ = data.tensors(splits.val)
    teacher.eval()
    with torch.no_grad():
        target = teacher(images).softmax(1)

    def gap():
        student.eval()
        with torch.no_grad():
            return (student(images).softmax(1) - target).abs().mean().item()

    before = gap()
    train(student, data, splits.train, splits.val, schedule, tmp_path, teacher=teacher, progress=False)
    assert gap() < before * 0.7


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("lr", -1.0), ("schedule", "linear"), ("label_smoothing", 1.0), ("momentum", 1.5)],
)
def test_schedule_validation_names_the_setting(field, value):
    with pytest.raises(UserError, match=rf"^\[train\]\.{field} = {value!r} is not allowed \(expected "):
        Schedule(**{field: value})


def test_lr_schedules_have_the_documented_shape():
    cosine = Schedule(lr=0.2, schedule="cosine")
    assert cosine.lr_at(0, 100) == pytest.approx(0.2) and cosine.lr_at(100, 100) == pytest.approx(0.0)
    onecycle = Schedule(lr=0.2, schedule="onecycle", warmup_fraction=0.2)
    values = np.array([onecycle.lr_at(step, 100) for step in range(101)])
    assert values.argmax() == 20 and values[0] == pytest.approx(0.2 / 25)
