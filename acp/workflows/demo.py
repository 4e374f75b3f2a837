"""``acp demo``: the whole job on an embedded default, with nothing but the installed package.

``task="classification"`` (the default): scikit-learn's bundled digits (upsampled to 16x16, 3 channels)
-> a CIFAR ResNet-8 (one residual block per stage, projection shortcuts, so coupled channel groups are
exercised) trained for a few epochs -> feature-map clustering -> a short PSO search at 50% of the MACs ->
finetuning of the winner -> a table and ``report.png``.

``task="detection"``: the generated ``shapes:64`` boxes (:mod:`acp.detection_data.shapes`) -> torchvision's
SSDlite at a quarter of MobileNetV3's width, trained from scratch (no pretrained weights) -> the same
clustering, search (scored by the detector's loss), finetuning and report; mAP@0.5 and mAP@[.5:.95] of the
base and the pruned detector on the validation split. Needs torchmetrics and faster-coco-eval
(``acp[detection]``).

Every stage is the real one; only the sizes are small. Each writes ``demo_config.toml``, the run's whole
configuration, so the other commands take the demo's output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from acp.errors import UserError

log = logging.getLogger(__name__)

DEMO_TASKS = ("classification", "detection")
DEFAULT_OUT = {"classification": "runs/demo", "detection": "runs/demo-detection"}

DEMO_MODEL = "resnet8_cifar"
DEMO_DATA = "digits:16"
DEMO_INPUT = [3, 16, 16]
# A ResNet-8 on 16x16 images gains little from a second thread and loses 3.3x when another process holds
# a core (bench_threads.py); the demo must be quick on a busy machine too.
DEMO_THREADS = 1


SAMPLE_IMAGE = "digit.png"  # a validation image to try the pruned model on (the README's "use it" snippet)


@dataclass(frozen=True)
class DemoSizes:
    base_epochs: int
    particles: int
    iterations: int
    finetune_epochs: int
    calibration_batches: int
    validation_images: int
    finalists: int
    finalist_steps: int


FULL = DemoSizes(
    base_epochs=6, particles=8, iterations=6, finetune_epochs=6, calibration_batches=8, validation_images=400,
    finalists=3, finalist_steps=25,
)  # fmt: skip
QUICK = DemoSizes(
    base_epochs=2, particles=4, iterations=2, finetune_epochs=1, calibration_batches=4, validation_images=200,
    finalists=2, finalist_steps=5,
)  # fmt: skip


@dataclass
class DemoResult:
    out_dir: Path
    base_accuracy: float
    pruned_accuracy: float
    metrics: dict
    seconds: float


def run_demo(
    out_dir: str | Path | None = None,
    *,
    task: str = "classification",
    quick: bool = False,
    flops: float = 0.5,
    progress: bool = True,
) -> DemoResult | DetectionDemoResult:
    """Train, search, finetune and report on the ``task``'s demo (module docstring) into ``out_dir``
    (default ``runs/demo``, ``runs/demo-detection`` for detection); returns the headline figures."""
    if task not in DEMO_TASKS:
        raise UserError(f"acp demo: task must be one of {', '.join(DEMO_TASKS)}; got {task!r}")
    out_dir = Path(DEFAULT_OUT[task] if out_dir is None else out_dir)
    if task == "detection":
        return run_detection_demo(out_dir, quick=quick, flops=flops, progress=progress)
    return _run_classification_demo(out_dir, quick=quick, flops=flops, progress=progress)


def _run_classification_demo(out_dir: Path, *, quick: bool, flops: float, progress: bool) -> DemoResult:
    import torch

    from acp.data import load_data, make_splits
    from acp.fileio import require_fresh_output
    from acp.models import create_model
    from acp.settings import RunSettings, Schedule
    from acp.train.loop import train
    from acp.workflows.finetune import finetune
    from acp.workflows.search import search

    started = time.perf_counter()
    sizes = QUICK if quick else FULL
    require_fresh_output(out_dir, "pick a new directory (acp demo --out DIR)")
    out_dir.mkdir(parents=True, exist_ok=True)

    log.info("1/4 training the base model (%s on %s, %d epochs)", DEMO_MODEL, DEMO_DATA, sizes.base_epochs)
    data = load_data(DEMO_DATA)
    splits = make_splits(data, "random:0.2", seed=0)
    _write_sample_image(data, splits.val, out_dir / SAMPLE_IMAGE)
    torch.manual_seed(0)
    base = create_model(DEMO_MODEL, num_classes=data.num_classes)
    base_schedule = Schedule(epochs=sizes.base_epochs, batch_size=32, lr=0.1, augment=False, seed=0)
    train(
        base,
        data,
        splits.train,
        splits.val,
        base_schedule,
        out_dir / "base",
        progress=progress,
        threads=DEMO_THREADS,
    )

    document = {
        "model": {
            "name": DEMO_MODEL,
            "num_classes": data.num_classes,
            "input_size": DEMO_INPUT,
            "weights": str((out_dir / "base" / "weights.pt").resolve()),
        },
        "data": {"spec": DEMO_DATA, "split": "random:0.2", "seed": 0},
        "space": {"round_to": 1, "min_keep": 0.1},
        "budget": {"flops": flops},
        "search": {"particles": sizes.particles, "iterations": sizes.iterations, "seed": 0},
        # the recipe step 3 uses, so demo_config.toml reproduces the demo when edited and rerun
        "finetune": {
            "epochs": sizes.finetune_epochs,
            "batch_size": 32,
            "lr": 0.05,
            "augment": False,
            "seed": 0,
            "threads": DEMO_THREADS,
        },
        "proxy": {
            "calibration_batches": sizes.calibration_batches,
            "calibration_batch_size": 32,
            "validation_images": sizes.validation_images,
        },
        "rerank": {"finalists": sizes.finalists, "finetune_steps": sizes.finalist_steps},
    }
    config = RunSettings.from_document(document, source="acp demo")
    (out_dir / "demo_config.toml").write_text(config.to_toml())

    log.info(
        "2/4 clustering + PSO search at %.0f%% of the MACs (%d particles x %d iterations)",
        100 * flops,
        sizes.particles,
        sizes.iterations,
    )
    result = search(config, out=out_dir / "search", progress=progress)

    log.info("3/4 finetuning the best architecture (%d epochs)", sizes.finetune_epochs)
    tuned = finetune(out_dir / "search" / "best_arch.json", out_dir=out_dir / "pruned", progress=progress)

    log.info("4/4 report: %s", out_dir / "search" / "report.png")
    metrics = tuned.metrics
    del result
    return DemoResult(
        out_dir,
        metrics["base_val_accuracy"],
        metrics["val_accuracy_after"],
        metrics,
        time.perf_counter() - started,
    )


def _write_sample_image(data, val_indices, path: Path) -> None:
    """The first validation image of class "7" (any class if there is none) as a PNG of the model's size."""
    from PIL import Image

    sevens = [int(index) for index in val_indices if data.classes[data.labels[index]] == "7"]
    index = sevens[0] if sevens else int(val_indices[0])
    Image.fromarray(data.images[index]).save(path)


# --- the detection demo --------------------------------------------------------------------------------

DETECTION_MODEL = "ssdlite320_mobilenet_v3_large"
# A quarter of MobileNetV3's width: 0.6 M parameters, 0.2 s per training step of 8 images on one core
# (half width: 3x that), and mAP@0.5 above 0.9 on the shapes after 6 epochs from scratch.
DETECTION_KWARGS = {"width_mult": 0.25}
DETECTION_DATA = "shapes:64"  # the detector resizes to 320x320 itself; 64 px images generate in a second
DETECTION_SPLIT = "random:0.2"  # 102 validation images: the reported mAPs
DETECTION_SAMPLE_IMAGE = "shapes.png"  # a validation image to try the pruned detector on
# SSDlite's training recipe, scaled to batches of 8 (torchvision trains it on 192 images per step): a
# lower weight decay than a classifier's; horizontal flips.
DETECTION_RECIPE = {"batch_size": 8, "weight_decay": 4e-5, "augment": True, "seed": 0}
DETECTION_BASE_LR = 0.05
DETECTION_FINETUNE_LR = 0.02
DETECTION_BATCH = 8  # calibration and evaluation batches of the proxy
# the search's and the re-ranking's score: the detector's loss ranked 24 random candidates as well as
# mAP@0.5 and 15% cheaper (benchmarks/RESULTS.md, "Detection proxy fidelity")
DETECTION_SCORE = "loss"

DETECTION_FULL = DemoSizes(
    base_epochs=6, particles=8, iterations=6, finetune_epochs=3, calibration_batches=4, validation_images=48,
    finalists=3, finalist_steps=10,
)  # fmt: skip
DETECTION_QUICK = DemoSizes(
    base_epochs=1, particles=3, iterations=1, finetune_epochs=1, calibration_batches=2, validation_images=16,
    finalists=2, finalist_steps=2,
)  # fmt: skip


@dataclass
class DetectionDemoResult:
    """The detection demo's headline figures: mAP@0.5 and mAP@[.5:.95] of the base and the finetuned
    pruned detector on the validation split; ``metrics`` is the finetune's ``metrics.json``."""

    out_dir: Path
    base_map50: float
    pruned_map50: float
    base_map: float
    pruned_map: float
    metrics: dict
    seconds: float


def run_detection_demo(
    out_dir: str | Path = DEFAULT_OUT["detection"],
    *,
    quick: bool = False,
    flops: float = 0.5,
    progress: bool = True,
) -> DetectionDemoResult:
    """Train, search, finetune, evaluate and report on the shapes detection demo (module docstring)."""
    from acp.fileio import require_fresh_output
    from acp.proxy.detection_score import require_map_packages

    out_dir = Path(out_dir)
    require_fresh_output(out_dir, "pick a new directory (acp demo --task detection --out DIR)")
    require_map_packages("acp demo --task detection")
    return _run_detection_demo(out_dir, DETECTION_QUICK if quick else DETECTION_FULL, flops, progress)


def _run_detection_demo(out_dir: Path, sizes: DemoSizes, flops: float, progress: bool) -> DetectionDemoResult:
    import torch

    from acp.detection_data import load_detection_data, make_detection_splits
    from acp.models import create_model
    from acp.models.detection import network_input_size
    from acp.proxy.detection_score import score_detector
    from acp.settings import RunSettings, Schedule
    from acp.train.detection_loop import train_detector
    from acp.train.finetune import write_metrics
    from acp.workflows.finetune import finetune
    from acp.workflows.search import search

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)

    log.info(
        "1/5 training the base detector (%s at width %s on %s, %d epochs, from scratch)",
        DETECTION_MODEL,
        DETECTION_KWARGS["width_mult"],
        DETECTION_DATA,
        sizes.base_epochs,
    )
    data = load_detection_data(DETECTION_DATA)
    splits = make_detection_splits(data, DETECTION_SPLIT, seed=0)
    _write_detection_sample(data, splits.val, out_dir / DETECTION_SAMPLE_IMAGE)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, not torch's global state
        torch.manual_seed(0)
        base = create_model(DETECTION_MODEL, num_classes=data.num_classes, **DETECTION_KWARGS)
    base_schedule = Schedule(epochs=sizes.base_epochs, lr=DETECTION_BASE_LR, **DETECTION_RECIPE)
    train_detector(
        base,
        data,
        splits.train,
        splits.val,
        out_dir=out_dir / "base",
        schedule=base_schedule,
        score_detector=score_detector,
        progress=progress,
        threads=DEMO_THREADS,
    )

    document = {
        "model": {
            "name": DETECTION_MODEL,
            "num_classes": data.num_classes,
            "input_size": list(network_input_size(base)),  # what SSDlite's transform hands its network
            "weights": str((out_dir / "base" / "weights.pt").resolve()),
            "kwargs": dict(DETECTION_KWARGS),
        },
        "task": {"kind": "detection"},
        "data": {"spec": DETECTION_DATA, "split": DETECTION_SPLIT, "seed": 0},
        "space": {"round_to": 1, "min_keep": 0.1},
        "budget": {"flops": flops},
        "search": {
            "particles": sizes.particles,
            "iterations": sizes.iterations,
            "random_particles": 1,
            "seed": 0,
        },
        "finetune": {
            "epochs": sizes.finetune_epochs,
            "lr": DETECTION_FINETUNE_LR,
            **DETECTION_RECIPE,
            "threads": DEMO_THREADS,
        },
        "proxy": {
            "calibration_batches": sizes.calibration_batches,
            "calibration_batch_size": DETECTION_BATCH,
            "eval_batch_size": DETECTION_BATCH,
            "validation_images": sizes.validation_images,
            "score": DETECTION_SCORE,
        },
        "rerank": {
            "finalists": sizes.finalists,
            "finetune_steps": sizes.finalist_steps,
            "calibration_batches": sizes.calibration_batches,
            "validation_images": sizes.validation_images,
            "score": DETECTION_SCORE,
        },
    }
    config = RunSettings.from_document(document, source="acp demo --task detection")
    (out_dir / "demo_config.toml").write_text(config.to_toml())

    log.info(
        "2/5 clustering + PSO search at %.0f%% of the MACs (%d particles x %d iterations, scored by the "
        "detection loss)",
        100 * flops,
        sizes.particles,
        sizes.iterations,
    )
    search(config, out=out_dir / "search", progress=progress)

    log.info("3/5 finetuning the best architecture (%d epochs)", sizes.finetune_epochs)
    tuned = finetune(out_dir / "search" / "best_arch.json", out_dir=out_dir / "pruned", progress=progress)

    log.info("4/5 evaluating base and pruned detector on %d validation images", len(splits.val))
    base_map50, base_map = _detection_maps(base, data, splits.val)
    pruned_map50, pruned_map = _detection_maps(tuned.model, data, splits.val)
    extra = {"base_map": base_map, "map_after": pruned_map, "map_is": "mAP@[.5:.95] on the validation split"}
    write_metrics(out_dir / "pruned", extra)
    metrics = {**tuned.metrics, **extra}

    log.info("5/5 report: %s", out_dir / "search" / "report.png")
    return DetectionDemoResult(
        out_dir, base_map50, pruned_map50, base_map, pruned_map, metrics, time.perf_counter() - started
    )


def _detection_maps(model, data, indices) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) of ``model`` on ``data[indices]``, from one pass of detections."""
    from acp.detection_data import iterate_detection_batches
    from acp.proxy.detection_score import detect, mean_average_precision
    from acp.threads import torch_threads

    batches = iterate_detection_batches(data, indices, DETECTION_BATCH, with_ignored=True)
    with torch_threads(DEMO_THREADS):
        predictions, targets = detect(model, batches)
    return (
        mean_average_precision(predictions, targets, metric="map50"),
        mean_average_precision(predictions, targets, metric="map"),
    )


def _write_detection_sample(data, val_indices, path: Path) -> None:
    """The first validation image with the most objects, as a PNG (a detector takes any size)."""
    from PIL import Image

    counts = [len(data.images[int(index)].labels) for index in val_indices]
    index = int(val_indices[counts.index(max(counts))])
    Image.fromarray(data.image(index)).save(path)
