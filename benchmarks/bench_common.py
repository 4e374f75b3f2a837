"""Shared by the benchmark scripts: replace one ``## title`` section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def update_section(title: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, leaving the other sections alone."""
    from acp.fileio import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    header = f"## {title}\n"
    section = header + "\n" + "\n".join(lines).rstrip() + "\n"
    start = text.find("\n" + header)
    if start == -1:
        updated = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(header))
        rest = "" if end == -1 else text[end + 1 :]
        updated = text[: start + 1] + section + ("\n" + rest if rest else "")
    atomic_write_text(path, updated)


FINETUNE_SUBSET_IMAGES = 8000  # the fixed short finetune of the fidelity benchmarks (1 epoch on these)
SELECTION_IMAGES = 5000
SELECTION_SEED = 20261202


def proxy_slice_indices(
    labels, train_indices, *, calibration_images: int, validation_images: int, seed: int, avoid=None
):
    """(calibration, proxy-validation) indices as ``ProxyData.from_image_data`` carves them from
    ``train_indices`` (both sorted; the proxy batches the calibration images in a seeded shuffle).
    With ``avoid``, validation is drawn from the rest minus those images -- how re-ranking draws its
    "fresh" slice, disjoint from the search proxy's validation images.

    For one ``seed``, calibration size and ``avoid``, validation slices are nested (the first ``v``
    images per class of one seeded shuffle): a 2,000-image slice holds the 1,000-image one.
    """
    import numpy as np

    from acp.data import take_stratified

    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    calibration = take_stratified(train, labels, calibration_images, seed=seed)
    rest = np.setdiff1d(train, calibration, assume_unique=True)
    if avoid is not None:
        rest = np.setdiff1d(rest, np.asarray(avoid, dtype=np.int64))
    return calibration, take_stratified(rest, labels, validation_images, seed=seed + 1)


def short_finetune_schedule(seed: int = 0, **changes):
    """The fixed short finetune of the fidelity and convergence benchmarks: 1 epoch, SGD nesterov, lr 0.05
    cosine, wd 5e-4, batch 128, crop+flip. channels_last=False: oneDNN's channels-last convolution
    backward crashed (heap corruption) on some pruned shapes with torch 2.14 on this CPU, e.g. widths
    5,12,11,5,28,32,26,16,64,47,47,63."""
    from acp.settings import Schedule

    recipe = {"epochs": 1, "batch_size": 128, "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4}
    return Schedule(**{**recipe, "augment": True, "seed": seed, "channels_last": False, **changes})


def finetune_subset(labels, train_indices, count: int = FINETUNE_SUBSET_IMAGES, *, seed: int = 0):
    """The fixed stratified training subset the fidelity benchmarks finetune every candidate on."""
    from acp.data import take_stratified

    return take_stratified(train_indices, labels, count, seed=seed)


def selection_indices(
    labels,
    train_indices,
    *,
    proxy_seed: int = 0,
    calibration_images: int = 1280,
    validation_images: int = 2000,
    rerank_images: int = 5000,
    rerank_calibration_images: int | None = None,
    finetune_images: int = FINETUNE_SUBSET_IMAGES,
    finetune_seed: int = 0,
    count: int = SELECTION_IMAGES,
    seed: int = SELECTION_SEED,
):
    """The "selection" slice: ``count`` class-balanced images of the training split, ground truth for
    design studies, so design choices are not made on the reporting (validation) split.

    Disjoint from every image a search with the default proxy slices (seed ``proxy_seed``) scores on:
    the calibration images (default 20 x 64), the proxy-validation images (default 2,000 and any
    smaller slice, which nests inside), the re-ranking slices (its own ``rerank_calibration_images``
    calibration images, default the proxy's, and up to ``rerank_images`` validation images disjoint from
    the proxy's, see :func:`proxy_slice_indices`), and the finetune subset
    (:func:`finetune_subset`). The base model was trained on these images, so accuracies on them run
    higher than on the validation split: use them for rankings.
    """
    import numpy as np

    from acp.data import take_stratified

    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    calibration, validation = proxy_slice_indices(
        labels,
        train,
        calibration_images=calibration_images,
        validation_images=validation_images,
        seed=proxy_seed,
    )
    rerank_calibration, fresh = proxy_slice_indices(
        labels,
        train,
        calibration_images=rerank_calibration_images or calibration_images,
        validation_images=rerank_images,
        seed=proxy_seed,
        avoid=validation,
    )
    excluded = [
        calibration,
        validation,
        rerank_calibration,
        fresh,
        finetune_subset(labels, train, finetune_images, seed=finetune_seed),
    ]
    pool = np.setdiff1d(train, np.concatenate(excluded))
    if len(pool) < count:
        raise ValueError(f"selection slice: only {len(pool)} training images left, {count} asked for")
    return take_stratified(pool, labels, count, seed=seed)


def provenance_lines(script: str, machine: str = "", versions: dict[str, str] | None = None) -> list[str]:
    """The Command / Date and machine / Versions lines every RESULTS.md section starts with."""
    import datetime
    import os
    import platform
    import shlex
    import subprocess
    import sys

    import torch

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    command = shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])  # quoted: copy-pasteable
    detail = f", {machine}" if machine else ""
    packages = {"python": platform.python_version(), "torch": torch.__version__, **(versions or {})}
    return [
        f"Command: `{command}`  ",
        f"Date: {date}; machine: {os.cpu_count()} CPU cores ({platform.machine()}){detail}  ",
        "Versions: "
        + ", ".join(f"{name} {version}" for name, version in packages.items())
        + f"; acp at {commit} (+ working tree)",
    ]
