"""Training a torchvision box detector: the classification loop's recipe on the detector's own loss.

``train_detector(model, data, train_indices, val_indices, out_dir=..., schedule=..., score_detector=...)``
trains in place with what :mod:`acp.train.loop` uses for classifiers: its SGD (the Schedule's lr,
momentum, Nesterov, weight decay), the Schedule's cosine / one-cycle / constant learning rate set per
step, every epoch shuffled by the loop's per-(seed, epoch) ``torch.Generator`` and torch's global RNG
seeded from it (the R-CNN family samples anchors and proposals from it), no batch of one, and an atomic
checkpoint after every epoch in the loop's format (epoch, model, optimizer, schedule, history; plus task and
metric), so "train 2 epochs" and "train 1, stop, resume 1" give identical weights and history. The loss is
the sum of the detector's training loss dictionary (what torchvision's references train on). After every
epoch the validation images are scored with ``metric`` (default mAP@0.5), in eval mode.

Choices, and the Schedule fields a detector does not use:

- the whole detector trains in train mode, BatchNorm included, as torchvision's references train it;
- ``augment``: only a horizontal flip of an image and its boxes, with probability 1/2 drawn from the
  epoch's generator (cheap, exact for boxes, deterministic); no crop or scale jitter, since a crop can cut
  boxes and needs rules for what is left of them;
- no gradient clipping: torchvision's detection references do not clip, and a diverging loss stops the
  run with the classification loop's error (lower the lr) rather than training on clipped steps;
- ``label_smoothing``, ``channels_last`` and ``distill_*`` are not used: a detector's losses are its own,
  its input is a list of images that its transform batches, and there is no detection distillation yet;
- the scorer is handed in (``score_detector``, normally :func:`acp.proxy.detection_score.score_detector`):
  acp's import rule keeps the training stage from importing the proxy stage, where the mAP lives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from acp.detection_data import DetectionData, iterate_detection_batches
from acp.errors import UserError
from acp.fileio import atomic_torch_save, atomic_write_json
from acp.models.detection import is_detector
from acp.settings import ProxySettings, Schedule
from acp.threads import torch_threads
from acp.train.loop import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    WEIGHTS_NAME,
    epoch_generator,
    load_training_checkpoint,
    make_optimizer,
    planned_steps,
    resume_from,
)

log = logging.getLogger(__name__)

TASK = "detection"  # recorded in the checkpoint: a classifier's checkpoint does not resume here
METRICS = ProxySettings.TASK_SCORES[TASK]  # "map50", "map", "loss": what score_detector computes
EVAL_BATCH_SIZE = 8  # images per eval-mode forward while scoring the validation images

Target = dict[str, torch.Tensor]
Batch = tuple[list[torch.Tensor], list[Target]]
DetectorScorer = Callable[..., float]  # (model, batches of Batch, *, metric) -> score, higher is better


@dataclass
class DetectionEpochRecord:
    epoch: int
    train_loss: float  # mean over the epoch's images of the summed loss dictionary, as it trained
    val_score: float  # the run's metric on the validation images after the epoch (higher is better)
    lr: float
    seconds: float


def flip_horizontally(
    images: list[torch.Tensor], targets: list[Target], flips: torch.Tensor
) -> tuple[list[torch.Tensor], list[Target]]:
    """The images whose ``flips`` entry is True mirrored left-right, their boxes with them (``x1, x2`` ->
    ``width - x2, width - x1``); the others and every other target key unchanged. Inputs are not modified."""
    flipped_images, flipped_targets = [], []
    for image, target, flip in zip(images, targets, flips.tolist()):
        if flip:
            width = image.shape[-1]
            boxes = target["boxes"]
            mirrored = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            image, target = image.flip(-1), {**target, "boxes": mirrored}
        flipped_images.append(image)
        flipped_targets.append(target)
    return flipped_images, flipped_targets


def _merge_lone_last(batches: Iterable[Batch]) -> Iterator[Batch]:
    """``batches`` with a last batch of one image joined onto the one before it: BatchNorm in train mode
    cannot normalize one value per channel, which SSD's 1x1 extra maps would be (the classification loop's
    rule, on lists)."""
    held = None
    for images, targets in batches:
        if held is not None and len(images) == 1:
            yield held[0] + images, held[1] + targets
            held = None
            continue
        if held is not None:
            yield held
        held = (images, targets)
    if held is not None:
        yield held


def _check_validation(data: DetectionData, val_indices: np.ndarray, metric: str) -> None:
    if len(val_indices) == 0:
        raise UserError("no validation images: the validation split is empty")
    if metric != "loss" and not any((~data.images[int(i)].ignored).any() for i in val_indices):
        raise UserError(
            f"cannot score {metric}: none of the {len(val_indices)} validation images has an object to find "
            "(not difficult or crowd); use another split"
        )


def _summed_loss(model: nn.Module, images: list[torch.Tensor], targets: list[Target]) -> torch.Tensor:
    try:
        losses = model(images, targets)
    except ValueError as error:
        if len(images) == 1 and "more than 1 value per channel" in str(error):
            raise UserError(
                f"{type(model).__name__} cannot train on batches of one image: a BatchNorm in train mode "
                "sees a 1x1 map (SSD's extra layers); use a batch size of 2 or more"
            ) from None
        raise
    if not isinstance(losses, dict) or not losses:
        raise UserError(
            f"{type(model).__name__} in training mode returned {type(losses).__name__}, not a torchvision "
            "detector's loss dictionary"
        )
    return sum(losses.values())


def train_detector(
    model: nn.Module,
    data: DetectionData,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    *,
    out_dir: str | Path,
    schedule: Schedule,
    score_detector: DetectorScorer,
    metric: str = "map50",
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[DetectionEpochRecord], None] | None = None,
    extra_metrics: dict | None = None,
    threads: int | None = None,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> list[DetectionEpochRecord]:
    """Train the torchvision detector ``model`` in place on ``data[train_indices]``; write checkpoint,
    weights and metrics under ``out_dir`` after every epoch; return the history (module docstring).

    ``score_detector(model, batches, metric=metric)`` scores the validation images (``val_indices``, every
    object with its ``iscrowd`` flag) after each epoch; ``schedule.seed`` seeds shuffling, flips and
    torch's global RNG per epoch. ``resume`` continues from ``out_dir``'s checkpoint; only ``epochs`` may
    differ from the run that wrote it. ``threads``: torch threads while training (None: as set). The model
    is left in eval mode (a detector in train mode wants targets).
    """
    if not is_detector(model):
        raise UserError(f"train_detector: expected a torchvision box detector, got {type(model).__name__}")
    if metric not in METRICS:
        raise UserError(f"detection training metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if len(train_indices) == 0:
        raise UserError("no training images: the training split is empty")
    _check_validation(data, val_indices, metric)
    with torch_threads(threads):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        optimizer = make_optimizer(model, schedule)
        history: list[DetectionEpochRecord] = []
        start_epoch = 0
        if resume:
            start_epoch, history = _restore(out_dir / CHECKPOINT_NAME, model, optimizer, schedule, metric)
        steps, total_steps = planned_steps(len(train_indices), schedule, start_epoch)
        for epoch in range(start_epoch, schedule.epochs):
            began = time.perf_counter()
            generator = epoch_generator(schedule.seed, epoch)
            torch.manual_seed(generator.initial_seed())  # the R-CNN samplers and transform draw from it
            model.train()
            batches = iterate_detection_batches(
                data, train_indices, schedule.batch_size, shuffle=True, generator=generator
            )
            bar = tqdm(
                _merge_lone_last(batches) if schedule.batch_size > 1 else batches,
                total=steps,
                desc=f"epoch {epoch + 1}/{schedule.epochs}",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            seen, loss_sum, lr = 0, 0.0, schedule.lr
            for step_in_epoch, (images, targets) in enumerate(bar):
                lr = schedule.lr_at(epoch * steps + step_in_epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if schedule.augment:
                    flips = torch.rand(len(images), generator=generator) < 0.5
                    images, targets = flip_horizontally(images, targets, flips)
                loss = _summed_loss(model, images, targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(images)
                loss_sum += loss.item() * len(images)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.3g}")
            validation = iterate_detection_batches(data, val_indices, eval_batch_size, with_ignored=True)
            val_score = float(score_detector(model, validation, metric=metric))
            record = DetectionEpochRecord(
                epoch + 1, loss_sum / max(1, seen), val_score, lr, time.perf_counter() - began
            )
            history.append(record)
            log.info(
                "epoch %d/%d: train loss %.4f | val %s %.4f (%.1fs)",
                record.epoch,
                schedule.epochs,
                record.train_loss,
                metric,
                val_score,
                record.seconds,
            )
            _save(out_dir, model, optimizer, schedule, metric, history, extra_metrics)
            if on_epoch is not None:
                on_epoch(record)
        if not history or start_epoch >= schedule.epochs:
            _save(out_dir, model, optimizer, schedule, metric, history, extra_metrics)
        model.eval()
        return history


def _save(out_dir: Path, model, optimizer, schedule: Schedule, metric: str, history, extra_metrics) -> None:
    """The classification loop's files and checkpoint keys, plus the task and the metric."""
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    records = [asdict(record) for record in history]
    checkpoint = {
        "task": TASK,
        "metric": metric,
        "epoch": len(history),
        "model": state,
        "optimizer": optimizer.state_dict(),
        "schedule": asdict(schedule),
        "history": records,
    }
    # weights first, checkpoint last: a crash in between re-runs the epoch, never skips it
    atomic_torch_save(out_dir / WEIGHTS_NAME, state)
    metrics = {"task": TASK, "metric": metric, "schedule": asdict(schedule), "epochs": records}
    if history:
        metrics["final"] = {f"val_{metric}": history[-1].val_score, "train_loss": history[-1].train_loss}
        metrics[f"best_val_{metric}"] = max(record.val_score for record in history)
    metrics.update(extra_metrics or {})
    atomic_write_json(out_dir / METRICS_NAME, metrics)
    atomic_torch_save(out_dir / CHECKPOINT_NAME, checkpoint)


def _restore(
    path: Path, model: nn.Module, optimizer, schedule: Schedule, metric: str
) -> tuple[int, list[DetectionEpochRecord]]:
    checkpoint = load_training_checkpoint(path)
    if checkpoint.get("task") != TASK:
        raise UserError(f"cannot resume {path}: it is a classifier's training checkpoint, not a detector's")
    if checkpoint.get("metric") != metric:
        raise UserError(
            f"cannot resume {path}: it was validated by {checkpoint.get('metric')!r}, now {metric!r}"
        )
    return resume_from(path, checkpoint, model, optimizer, schedule, DetectionEpochRecord)
