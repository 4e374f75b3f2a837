"""Training and finetuning loop: a function of (model, data, schedule), resumable to the bit.

SGD with (Nesterov) momentum, weight decay, label smoothing, and a cosine or one-cycle learning-rate
schedule computed per step from a closed form (no scheduler object to pickle). Every epoch draws its
shuffling and augmentation from a ``torch.Generator`` seeded by (seed, epoch), and seeds torch's global
RNG the same way (dropout), so "train 2 epochs" and "train 1, stop, resume 1" give identical weights.
A checkpoint (model, optimizer, epoch, history) is written atomically after each epoch.

Every epoch sees every training image: the last batch may be smaller than ``batch_size`` (216 images at
batch 128 are two steps, 128 + 88), except that a last batch of a single image joins the batch before it,
because BatchNorm cannot normalize a batch of one in training mode.

An optional teacher turns the loss into knowledge distillation: ``(1 - alpha) * CE + alpha * T^2 * KL``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from acp.data import ImageData, iterate_batches
from acp.errors import UserError
from acp.fileio import atomic_torch_save, atomic_write_json, load_checkpoint
from acp.prune import WEIGHTS_FILE
from acp.settings import Schedule
from acp.threads import torch_threads

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = WEIGHTS_FILE  # the pruned-model file name (acp.prune)
METRICS_NAME = "metrics.json"
FEW_STEPS_PER_EPOCH = 4  # fewer, and the split is too small for the batch size: say so


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    indices: np.ndarray,
    *,
    batch_size: int = 256,
    channels_last: bool = True,
) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of ``model`` on ``data[indices]``, in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for images, labels in iterate_batches(data, indices, batch_size):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    count = max(1, len(indices))
    return correct / count, loss_sum / count


def channels_last_is_safe(model: nn.Module, minimum: int = 8) -> bool:
    """Whether channels-last training is safe for ``model`` on this CPU build.

    Channels-last roughly halves the time of a CIFAR ResNet training step on CPU, but with torch 2.14's
    oneDNN kernels the backward pass of convolutions with fewer than ~8 channels corrupts the heap
    (``double free or corruption``) -- and pruned networks have such layers. So it is used only when
    every convolution has at least ``minimum`` output channels and at least ``minimum`` input channels
    (a convolution reading the image itself is exempt).
    """
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        return False
    image_channels = convolutions[0].in_channels
    for conv in convolutions:
        if conv.out_channels < minimum:
            return False
        if conv.in_channels < minimum and not (
            conv is convolutions[0] and conv.in_channels == image_channels
        ):
            return False
    return True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The seeded generator of one epoch's order and augmentation (both training loops: a resumed run
    draws exactly what an uninterrupted one would)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def planned_steps(images: int, schedule: Schedule, start_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, in all) of a training run, with a warning when an epoch is only a few
    steps (a batch size too large for the training images)."""
    steps = steps_per_epoch(images, schedule.batch_size)
    total_steps = steps * schedule.epochs
    if steps < FEW_STEPS_PER_EPOCH and start_epoch < schedule.epochs:
        log.warning(
            "only %d training images: %d optimizer step(s) per epoch at batch size %d, %d in all; "
            "a smaller batch size (--batch-size) trains more per epoch",
            images,
            steps,
            schedule.batch_size,
            total_steps,
        )
    return steps, total_steps


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over ``images`` training images: every image, no batch of one
    (a lone last image is merged into the batch before it; see :func:`_merge_lone_last`)."""
    steps = -(-images // batch_size)
    if batch_size > 1 and images > batch_size and images % batch_size == 1:
        steps -= 1
    return max(1, steps)


def _merge_lone_last(batches):
    """``batches`` with a last batch of one image concatenated onto the one before it."""
    held = None
    for batch in batches:
        if held is not None and len(batch[1]) == 1:
            yield torch.cat([held[0], batch[0]]), torch.cat([held[1], batch[1]])
            held = None
            continue
        if held is not None:
            yield held
        held = batch
    if held is not None:
        yield held


def make_optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.SGD:
    """SGD with the schedule's learning rate, momentum and weight decay (both training loops)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=schedule.lr,
        momentum=schedule.momentum,
        nesterov=schedule.nesterov and schedule.momentum > 0,
        weight_decay=schedule.weight_decay,
    )


def _loss(logits, labels, schedule: Schedule, teacher_logits=None) -> torch.Tensor:
    hard = F.cross_entropy(logits, labels, label_smoothing=schedule.label_smoothing)
    if teacher_logits is None:
        return hard
    temperature = schedule.distill_temperature
    soft = F.kl_div(
        F.log_softmax(logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - schedule.distill_alpha) * hard + schedule.distill_alpha * temperature**2 * soft


def train(
    model: nn.Module,
    data: ImageData,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    schedule: Schedule,
    out_dir: str | Path,
    *,
    resume: bool = False,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    extra_metrics: dict | None = None,
    threads: int | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place; write checkpoint/weights/metrics under ``out_dir``; return the history.

    ``threads``: torch threads while training (None: torch's current setting; see :mod:`acp.threads`).
    """
    with torch_threads(threads):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        channels_last = schedule.channels_last and channels_last_is_safe(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, schedule)
        history: list[EpochRecord] = []
        start_epoch = 0
        checkpoint_path = out_dir / CHECKPOINT_NAME
        if resume:
            start_epoch, history = _restore(checkpoint_path, model, optimizer, schedule)
        if teacher is not None:
            teacher.eval()
        if len(train_indices) == 0:
            raise UserError("no training images: the training split is empty")
        steps, total_steps = planned_steps(len(train_indices), schedule, start_epoch)
        for epoch in range(start_epoch, schedule.epochs):
            began = time.perf_counter()
            torch.manual_seed(schedule.seed * 1_000_003 + epoch)  # dropout & co. draw from the global RNG
            generator = epoch_generator(schedule.seed, epoch)
            model.train()
            seen, correct, loss_sum = 0, 0, 0.0
            batches = iterate_batches(
                data,
                train_indices,
                schedule.batch_size,
                shuffle=True,
                augmented=schedule.augment,
                generator=generator,
            )
            bar = tqdm(
                _merge_lone_last(batches) if schedule.batch_size > 1 else batches,
                total=steps,
                desc=f"epoch {epoch + 1}/{schedule.epochs}",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            lr = schedule.lr
            for step_in_epoch, (images, labels) in enumerate(bar):
                lr = schedule.lr_at(epoch * steps + step_in_epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                logits = model(images)
                loss = _loss(logits, labels, schedule, teacher_logits)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(labels)
                loss_sum += loss.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.3g}")
            val_accuracy, val_loss = evaluate(model, data, val_indices, channels_last=channels_last)
            record = EpochRecord(
                epoch + 1,
                loss_sum / max(1, seen),
                correct / max(1, seen),
                val_loss,
                val_accuracy,
                lr,
                time.perf_counter() - began,
            )
            history.append(record)
            log.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f (%.1fs)",
                record.epoch,
                schedule.epochs,
                record.train_loss,
                record.train_accuracy,
                val_loss,
                val_accuracy,
                record.seconds,
            )
            _save(out_dir, model, optimizer, schedule, history, extra_metrics)
            if on_epoch is not None:
                on_epoch(record)
        if not history or start_epoch >= schedule.epochs:
            _save(out_dir, model, optimizer, schedule, history, extra_metrics)
        return history


def _save(out_dir: Path, model, optimizer, schedule: Schedule, history, extra_metrics) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    checkpoint = {
        "epoch": len(history),
        "model": state,
        "optimizer": optimizer.state_dict(),
        "schedule": asdict(schedule),
        "history": [asdict(record) for record in history],
    }
    # weights first, checkpoint last: a crash in between re-runs the epoch, never skips it
    atomic_torch_save(out_dir / WEIGHTS_NAME, state)
    metrics = {"schedule": asdict(schedule), "epochs": [asdict(record) for record in history]}
    if history:
        metrics["final"] = {"val_accuracy": history[-1].val_accuracy, "val_loss": history[-1].val_loss}
        metrics["best_val_accuracy"] = max(record.val_accuracy for record in history)
    metrics.update(extra_metrics or {})
    atomic_write_json(out_dir / METRICS_NAME, metrics)
    atomic_torch_save(out_dir / CHECKPOINT_NAME, checkpoint)


def _restore(path: Path, model: nn.Module, optimizer, schedule: Schedule) -> tuple[int, list[EpochRecord]]:
    checkpoint = load_training_checkpoint(path)
    if checkpoint.get("task", "classification") != "classification":
        raise UserError(
            f"cannot resume {path}: it is a {checkpoint['task']} training checkpoint, not a classifier's"
        )
    return resume_from(path, checkpoint, model, optimizer, schedule, EpochRecord)


def load_training_checkpoint(path: Path) -> dict:
    """A training checkpoint (``weights_only``), checked to hold epoch/model/optimizer/schedule."""
    checkpoint = load_checkpoint(path, what="training checkpoint")
    if not isinstance(checkpoint, dict) or not {"epoch", "model", "optimizer", "schedule"} <= set(checkpoint):
        raise UserError(f"training checkpoint {path} is incomplete (expected epoch/model/optimizer/schedule)")
    return checkpoint


def resume_from(path: Path, checkpoint: dict, model: nn.Module, optimizer, schedule: Schedule, record_type):
    """(epoch, history of ``record_type``) after loading ``checkpoint`` into ``model`` and ``optimizer``;
    a UserError when a setting other than ``epochs`` changed or the weights do not fit."""
    saved = dict(checkpoint["schedule"])
    current = asdict(schedule)
    changed = [k for k in current if k != "epochs" and saved.get(k) != current[k]]
    if changed:
        key = changed[0]
        raise UserError(
            f"cannot resume {path}: setting {key} was {saved.get(key)!r}, now {current[key]!r} "
            "(only --epochs may change on resume)"
        )
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        raise UserError(
            f"training checkpoint {path} does not fit the model: {' '.join(str(error).split())[:200]}"
        ) from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    history = [record_type(**record) for record in checkpoint.get("history", [])]
    return int(checkpoint["epoch"]), history
