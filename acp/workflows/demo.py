"""``acp demo``: the whole job on an embedded default, with nothing but the installed package.

scikit-learn's bundled digits (upsampled to 16x16, 3 channels) -> a CIFAR ResNet-8 (one residual block
per stage, projection shortcuts, so coupled channel groups are exercised) trained for a few epochs ->
feature-map clustering -> a short PSO search at 50% of the MACs -> finetuning of the winner -> a table
and ``report.png``. Every stage is the real one; only the sizes are small. A few minutes on 2 cores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

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
    out_dir: str | Path = "runs/demo", *, quick: bool = False, flops: float = 0.5, progress: bool = True
) -> DemoResult:
    """Train, search, finetune and report on the digits demo; returns the headline figures."""
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
    out_dir = Path(out_dir)
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
