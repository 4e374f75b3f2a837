"""Retrain a searched architecture: materialize it from the base weights, finetune, hand it over.

``finetune_model(arch, base, space, data, splits, ...)`` inherits the kept channels' weights from the
trained base model, trains with the loop in :mod:`acp.train.loop` (optionally distilled from the unpruned
model), and writes a directory that ``acp.load_pruned(DIR)`` loads anywhere: ``arch.json`` +
``weights.pt`` (plain state_dict), plus ``metrics.json`` (accuracy before/after, base accuracy,
MACs/params and ratios, CPU latency vs the base model), ``checkpoint.pt`` (resume) and
``training_curve.png``. It reads no configuration: finding the weights, data and split of a search run is
the job of :mod:`acp.workflows.finetune`.

A torchvision detector with :class:`~acp.detection_data.DetectionData` takes the same steps and writes the
same files through :mod:`acp.train.detection_finetune` (mAP@0.5 instead of accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.fileio import atomic_write_json, require_fresh_output
from acp.settings import Schedule
from acp.train.loop import CHECKPOINT_NAME, METRICS_NAME, evaluate, train

log = logging.getLogger(__name__)

BEFORE_NAME = "before.json"
CURVE_NAME = "training_curve.png"


@dataclass
class FinetuneResult:
    out_dir: Path
    model: nn.Module
    arch: Architecture
    metrics: dict


def finetune_model(
    arch: Architecture,
    base: nn.Module,
    space,
    data,
    splits,
    *,
    out_dir: str | Path,
    schedule: Schedule,
    distill: bool = False,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
    measure_latency_of_models: bool = True,
    on_epoch=None,
    provenance: dict | None = None,
    score_detector: Callable[..., float] | None = None,
) -> FinetuneResult:
    """Materialize ``arch`` from ``base`` (the trained unpruned model) and finetune it on ``data``.

    ``splits`` is the run's split: the pruned model trains on ``splits.train`` and is validated on
    ``splits.val``, the same images the base model was validated on. ``provenance`` (e.g. the weights
    file and data spec) is recorded in ``metrics.json``.

    A torchvision detector (:func:`acp.models.detection.is_detector`) with ``DetectionData`` is finetuned
    by :func:`acp.train.detection_finetune.finetune_detector`, which needs ``score_detector``
    (:func:`acp.proxy.detection_score.score_detector`; the training stage may not import the proxy).
    """
    from acp.detection_data import DetectionData
    from acp.models.detection import is_detector
    from acp.prune import materialize
    from acp.threads import torch_threads

    detector = is_detector(base)
    if detector != isinstance(data, DetectionData):
        model_kind = "a box detector" if detector else "a classifier"
        data_kind = "classification" if detector else "detection"
        raise UserError(f"finetune: the model is {model_kind}, but data {data.spec} is {data_kind} data")
    if detector:
        from acp.train.detection_finetune import finetune_detector

        return finetune_detector(
            arch,
            base,
            space,
            data,
            splits,
            out_dir=out_dir,
            schedule=schedule,
            score_detector=score_detector,
            distill=distill,
            resume=resume,
            threads=threads,
            progress=progress,
            measure_latency_of_models=measure_latency_of_models,
            on_epoch=on_epoch,
            provenance=provenance,
        )
    if data.image_shape != tuple(arch.model.input_size):
        raise UserError(
            f"images of data {data.spec} are {'x'.join(map(str, data.image_shape))}, but the architecture's "
            f"input size is {'x'.join(map(str, arch.model.input_size))}"
        )
    pruned = materialize(base, arch, space)
    out_dir = prepare_output_dir(out_dir, resume, pruned, arch)

    with torch_threads(threads):
        before = _before_metrics(out_dir, resume, base, pruned, arch, data, splits, measure_latency_of_models)
    before.update({**(provenance or {}), "distill": bool(distill), "recipe": schedule.to_dict()})
    history = train(
        pruned,
        data,
        splits.train,
        splits.val,
        schedule,
        out_dir,
        resume=resume,
        teacher=base if distill else None,
        progress=progress,
        extra_metrics=before,
        on_epoch=on_epoch,
        threads=threads,
    )
    metrics = dict(before)
    metrics["val_accuracy_after"] = history[-1].val_accuracy
    metrics["val_loss_after"] = history[-1].val_loss
    metrics["epochs_trained"] = len(history)
    write_metrics(out_dir, metrics)
    _plot_curve(out_dir / CURVE_NAME, history, metrics)
    return FinetuneResult(out_dir, pruned, arch, metrics)


def prepare_output_dir(out_dir: str | Path, resume: bool, pruned: nn.Module, arch: Architecture) -> Path:
    """``out_dir`` checked (fresh, or holding a checkpoint to resume) and created; on a fresh start the
    pruned model is saved there (arch.json now; weights.pt is rewritten after every epoch)."""
    from acp.prune import save_pruned

    out_dir = Path(out_dir)
    if resume and not (out_dir / CHECKPOINT_NAME).is_file():
        raise UserError(f"--resume: {out_dir} has no {CHECKPOINT_NAME} to resume from")
    if not resume:
        require_fresh_output(out_dir, "pick a new directory or pass --resume")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_pruned(pruned, arch, out_dir)
    return out_dir


def stored_before_metrics(out_dir: Path, resume: bool, splits) -> dict | None:
    """The before-training metrics a resumed run computed when it started (its split checked), else None."""
    path = out_dir / BEFORE_NAME
    if not (resume and path.is_file()):
        return None
    import json

    before = json.loads(path.read_text())
    check_same_split(before.get("split"), splits, out_dir)
    return before


def cost_metrics(arch: Architecture) -> dict:
    """MACs and parameters of the base and the pruned model, and their ratios."""
    return {
        "base_macs": arch.base_macs,
        "macs": arch.macs,
        "macs_ratio": arch.macs_ratio,
        "base_params": arch.base_params,
        "params": arch.params,
        "params_ratio": arch.params_ratio,
    }


def check_same_split(stored: dict | None, splits, out_dir) -> None:
    """A resumed training run must keep its split: another one would validate on training images."""
    if stored is not None and stored != splits.describe():
        now = splits.describe()
        raise UserError(
            f"--resume {out_dir}: it was trained on split {stored.get('method')!r} "
            f"(seed {stored.get('seed')}), now {now['method']!r} (seed {now['seed']}); "
            "resume with the same --split/--split-seed"
        )


def _before_metrics(out_dir, resume, base, pruned, arch, image_data, splits, with_latency) -> dict:
    """Accuracy of base and freshly pruned model, cost and latency — computed once, kept across resumes."""
    stored = stored_before_metrics(out_dir, resume, splits)
    if stored is not None:
        return stored
    base_accuracy, base_loss = evaluate(base, image_data, splits.val)
    pruned_accuracy, pruned_loss = evaluate(pruned, image_data, splits.val)
    metrics = {
        "base_val_accuracy": base_accuracy,
        "base_val_loss": base_loss,
        "val_accuracy_before": pruned_accuracy,
        "val_loss_before": pruned_loss,
        **cost_metrics(arch),
        "validation_images": int(len(splits.val)),
        "split": splits.describe(),
    }
    if with_latency:
        metrics["latency_cpu"] = cpu_latency(base, pruned, arch.model.input_size, batch_sizes=(1, 64))
        if arch.latency is not None:
            metrics["latency_budget"] = _measured_against_budget(base, pruned, arch)
    atomic_write_json(out_dir / BEFORE_NAME, metrics)
    return metrics


def cpu_latency(base: nn.Module, pruned: nn.Module, input_size, *, batch_sizes) -> dict:
    """Median CPU forward time of both models (torch, random input of ``input_size``) per batch size."""
    from acp.latency.measure import measure_latency

    latency = {}
    for batch in batch_sizes:
        base_ms = measure_latency(base, input_size, batch_size=batch, repeats=20).median_ms
        pruned_ms = measure_latency(pruned, input_size, batch_size=batch, repeats=20).median_ms
        latency[f"batch{batch}"] = {
            "base_ms": base_ms,
            "pruned_ms": pruned_ms,
            "speedup": base_ms / pruned_ms,
        }
    return latency


def _measured_against_budget(base, pruned, arch) -> dict:
    """For an architecture searched under a latency budget: its latency measured on the runtime, batch
    size and thread count the budget's table was built for, next to the prediction."""
    from acp.latency.runtimes import measure_models

    where = arch.latency
    base_ms, pruned_ms = measure_models(
        [base, pruned],
        arch.model.input_size,
        runtime=where["runtime"],
        batch_size=where["batch_size"],
        threads=where["threads"],
    )
    return {
        **where,
        "budget": {key: arch.budget.get(key) for key in ("latency", "latency_ms")},
        "measured_base_ms": base_ms,
        "measured_ms": pruned_ms,
        "measured_ratio": pruned_ms / base_ms,
        "predicted_ratio": where["predicted_ms"] / where["base_ms"],
    }


def write_metrics(out_dir: Path, extra: dict) -> None:
    """``extra`` merged into ``out_dir/metrics.json`` (what the training loop wrote each epoch)."""
    import json

    path = out_dir / METRICS_NAME
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.update(extra)
    atomic_write_json(path, metrics)


def _plot_curve(path: Path, history, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record.epoch for record in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train", marker="o")
    loss_axis.plot(epochs, [r.val_loss for r in history], label="validation", marker="o")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    accuracy_axis.plot(epochs, [100 * r.train_accuracy for r in history], label="train", marker="o")
    accuracy_axis.plot(epochs, [100 * r.val_accuracy for r in history], label="validation", marker="o")
    accuracy_axis.axhline(
        100 * metrics["base_val_accuracy"], color="grey", linestyle="--", label="unpruned base"
    )
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("accuracy (%)")
    accuracy_axis.legend()
    figure.suptitle(
        f"finetuning at {100 * metrics['macs_ratio']:.1f}% MACs, {100 * metrics['params_ratio']:.1f}% params"
    )
    figure.tight_layout()
    from acp.fileio import atomic_write

    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=100), binary=True)
    plt.close(figure)


def summary_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """Rows (what, base, pruned) of a finetune's metrics, for printing."""
    rows = [("", "base", "pruned")]
    if "map50_after" in metrics:  # a detector's (acp.train.detection_finetune)
        rows.append(
            (
                "val mAP@0.5",
                f"{100 * metrics['base_map50']:.2f}",
                f"{100 * metrics['map50_after']:.2f} (right after pruning "
                f"{100 * metrics['map50_before']:.2f})",
            )
        )
    else:
        rows.append(
            (
                "val accuracy",
                f"{100 * metrics['base_val_accuracy']:.2f}%",
                f"{100 * metrics['val_accuracy_after']:.2f}% (right after pruning "
                f"{100 * metrics['val_accuracy_before']:.2f}%)",
            )
        )
    rows.append(
        ("MACs", f"{metrics['base_macs']:,}", f"{metrics['macs']:,} ({100 * metrics['macs_ratio']:.1f}%)")
    )
    rows.append(
        (
            "params",
            f"{metrics['base_params']:,}",
            f"{metrics['params']:,} ({100 * metrics['params_ratio']:.1f}%)",
        )
    )
    measured = metrics.get("latency_budget")
    if measured is not None:
        rows.append(
            (
                f"latency ({measured['runtime']}, batch {measured['batch_size']})",
                f"{measured['measured_base_ms']:.2f} ms",
                f"{measured['measured_ms']:.2f} ms = {measured['measured_ratio']:.1%} of the base "
                f"(predicted {measured['predicted_ratio']:.1%})",
            )
        )
    for batch, latency in metrics.get("latency_cpu", {}).items():
        rows.append(
            (
                f"latency {batch.replace('batch', 'batch ')}",
                f"{latency['base_ms']:.2f} ms",
                f"{latency['pruned_ms']:.2f} ms ({_speed_text(latency['speedup'])})",
            )
        )
    return rows


def _speed_text(speedup: float) -> str:
    """``"1.52x faster"``, or ``"1.13x slower"`` when the pruned model is slower (a speed-up below 1)."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
