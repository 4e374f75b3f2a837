"""Retrain a searched detector: :func:`acp.train.finetune.finetune_model`'s steps for a torchvision detector.

``finetune_detector(arch, base, space, data, splits, ...)`` materializes ``arch`` from the trained base
detector, trains it with :func:`acp.train.detection_loop.train_detector` on ``splits.train`` and scores
mAP@0.5 on ``splits.val`` (the images the base detector was validated on), and writes what the
classification path writes: ``arch.json`` + ``weights.pt`` (``acp.load_pruned(DIR)`` loads the detector),
``metrics.json``, ``checkpoint.pt`` (resume) and ``training_curve.png``. ``metrics.json`` holds
``base_map50``, ``map50_before`` (the materialized detector as it inherits the base weights and BatchNorm
statistics, not recalibrated -- as the classification path's ``val_accuracy_before``), ``map50_after``,
the MACs/params and their ratios, and ``latency_cpu`` at batch 1 only: the whole detector's forward
(resize, network, box decoding, NMS) on one random image of the architecture's input size -- batch 64 of
detection-sized images would take longer than a short finetune. A latency budget's own measurement
(``latency_budget`` of a classifier) is not made: acp's latency tables do not cover detectors.
No distillation: ``distill=True`` is a UserError.
"""

from __future__ import annotations

import logging
from pathlib import Path

from acp.core.architecture import Architecture
from acp.detection_data import DetectionData, iterate_detection_batches
from acp.errors import UserError
from acp.fileio import atomic_write_json
from acp.settings import Schedule
from acp.train.detection_loop import EVAL_BATCH_SIZE, DetectorScorer, train_detector
from acp.train.finetune import (
    BEFORE_NAME,
    CURVE_NAME,
    FinetuneResult,
    cost_metrics,
    cpu_latency,
    prepare_output_dir,
    stored_before_metrics,
    write_metrics,
)

log = logging.getLogger(__name__)

METRIC = "map50"
LATENCY_MEASURED = (
    "whole detector forward (resize, network, box decoding, NMS) on one random image of the input size"
)


def finetune_detector(
    arch: Architecture,
    base,
    space,
    data: DetectionData,
    splits,
    *,
    out_dir: str | Path,
    schedule: Schedule,
    score_detector: DetectorScorer | None,
    distill: bool = False,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
    measure_latency_of_models: bool = True,
    on_epoch=None,
    provenance: dict | None = None,
) -> FinetuneResult:
    """Materialize ``arch`` from the trained detector ``base`` and finetune it (module docstring).

    ``score_detector`` is :func:`acp.proxy.detection_score.score_detector` (handed in: the training stage
    may not import the proxy stage). ``provenance`` is recorded in ``metrics.json``.
    """
    from acp.prune import materialize
    from acp.threads import torch_threads

    if score_detector is None:
        raise TypeError("finetuning a detector needs score_detector=acp.proxy.detection_score.score_detector")
    if distill:
        raise UserError("finetune: distillation (--distill) is not implemented for detectors; leave it off")
    if arch.model.num_classes is not None and arch.model.num_classes != data.num_classes:
        raise UserError(
            f"data {data.spec} has {data.num_classes - 1} object classes + background = {data.num_classes}, "
            f"but the architecture's detector has num_classes {arch.model.num_classes}"
        )
    pruned = materialize(base, arch, space)
    out_dir = prepare_output_dir(out_dir, resume, pruned, arch)
    with torch_threads(threads):
        before = _before_metrics(
            out_dir, resume, base, pruned, arch, data, splits, score_detector, measure_latency_of_models
        )
    before.update({**(provenance or {}), "distill": False, "recipe": schedule.to_dict()})
    history = train_detector(
        pruned,
        data,
        splits.train,
        splits.val,
        out_dir=out_dir,
        schedule=schedule,
        score_detector=score_detector,
        metric=METRIC,
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        extra_metrics=before,
        threads=threads,
    )
    metrics = dict(before)
    metrics["map50_after"] = history[-1].val_score
    metrics["epochs_trained"] = len(history)
    write_metrics(out_dir, metrics)
    _plot_curve(out_dir / CURVE_NAME, history, metrics)
    return FinetuneResult(out_dir, pruned, arch, metrics)


def _map50(model, data: DetectionData, indices, score_detector: DetectorScorer) -> float:
    batches = iterate_detection_batches(data, indices, EVAL_BATCH_SIZE, with_ignored=True)
    return float(score_detector(model, batches, metric=METRIC))


def _before_metrics(out_dir, resume, base, pruned, arch, data, splits, score_detector, with_latency) -> dict:
    """mAP@0.5 of base and freshly pruned detector, cost and latency: computed once, kept across resumes."""
    stored = stored_before_metrics(out_dir, resume, splits)
    if stored is not None:
        return stored
    metrics = {
        "base_map50": _map50(base, data, splits.val, score_detector),
        "map50_before": _map50(pruned, data, splits.val, score_detector),
        "map50_is": "mAP@0.5 (COCO's 101-point interpolation) on the validation split",
        **cost_metrics(arch),
        "validation_images": int(len(splits.val)),
        "split": splits.describe(),
    }
    if with_latency:
        metrics["latency_cpu"] = cpu_latency(base, pruned, arch.model.input_size, batch_sizes=(1,))
        metrics["latency_cpu_measures"] = LATENCY_MEASURED
    if arch.latency is not None:
        log.warning("finetune: the latency budget is not re-measured for a detector (no latency tables)")
    atomic_write_json(out_dir / BEFORE_NAME, metrics)
    return metrics


def _plot_curve(path: Path, history, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acp.fileio import atomic_write

    epochs = [record.epoch for record in history]
    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [record.train_loss for record in history], label="train", marker="o")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("detection loss (sum of the loss dictionary)")
    loss_axis.legend()
    map_axis.plot(epochs, [100 * record.val_score for record in history], label="validation", marker="o")
    map_axis.axhline(100 * metrics["base_map50"], color="grey", linestyle="--", label="unpruned base")
    map_axis.set_xlabel("epoch")
    map_axis.set_ylabel("mAP@0.5 (%)")
    map_axis.legend()
    figure.suptitle(
        f"finetuning at {100 * metrics['macs_ratio']:.1f}% MACs, {100 * metrics['params_ratio']:.1f}% params"
    )
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    plt.close(figure)
