"""How fast are the images of a 224-px ImageFolder read: from the cached array, or streamed from the files?

    python benchmarks/bench_data.py [--images 2000] [--size 224] [--repeats 3] [--folder DIR] [--note TEXT]
                                    [--no-write] [--quick]

Makes an ImageFolder of JPEGs (quality 90) by upscaling CIFAR-10 training images
(../shared/data/cifar10/train, the first images of each class; bicubic) to ``--size`` px, unless
``--folder`` already holds one, and reads one epoch of it -- every image once, shuffled, batch 128, as
the training loop does but with no model and no augmentation -- through ``acp.data.iterate_batches``:

- cached: the folder decoded once into the uint8 array (cache limit above its size), batches indexed
  from it;
- streamed with 0, 1 and 2 loader workers (cache limit 0): every batch decoded from the files by a torch
  DataLoader (0: in the main process).

Reports images/s (median and best of ``--repeats`` epochs) and the one-off cost of each way: decoding
and writing the cache, or checking the image sizes and computing the statistics of a streamed set. The
batches of every way are checked to be identical. Replaces this script's section of
benchmarks/RESULTS.md unless ``--no-write``; ``--quick`` is 40 images and one repeat (the smoke test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SECTION = "Data loading (bench_data.py)"
ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train"
BATCH = 128
WORKERS = (0, 1, 2)


def make_folder(folder: Path, images: int, size: int) -> Path:
    """``images`` JPEGs (spread over CIFAR-10's classes) upscaled to ``size`` px under ``folder``."""
    from PIL import Image

    classes = sorted(entry.name for entry in os.scandir(CIFAR) if entry.is_dir())
    if not classes:
        raise SystemExit(f"no CIFAR-10 ImageFolder at {CIFAR}")
    per_class = -(-images // len(classes))
    made = 0
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for file_name in sorted(os.listdir(CIFAR / name))[:per_class]:
            if made == images:
                break
            with Image.open(CIFAR / name / file_name) as small:
                large = small.convert("RGB").resize((size, size), Image.BICUBIC)
            large.save(folder / name / (Path(file_name).stem + ".jpg"), quality=90)
            made += 1
    return folder


def epoch(data, seed: int) -> tuple[float, list[torch.Tensor]]:
    """(seconds, the label tensors) of one shuffled pass over every image."""
    from acp.data import iterate_batches

    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    labels, checksum = [], 0.0
    for images, batch_labels in iterate_batches(
        data, np.arange(len(data)), BATCH, shuffle=True, generator=generator
    ):
        labels.append(batch_labels)
        checksum += float(images[:, :, ::37, ::37].double().sum())  # touch the pixels, cheaply
    return time.perf_counter() - began, [torch.cat(labels), torch.tensor(checksum)]


def measure(folder: Path, repeats: int) -> tuple[dict[str, dict], int]:
    from acp.data import load_data

    figures: dict[str, dict] = {}
    reference = None
    with tempfile.TemporaryDirectory(prefix="bench-data-cache-") as cache:
        ways = [("cached array", 1000.0, 0)] + [
            (f"streamed, {workers} loader worker{'s' if workers != 1 else ''}", 0.0, workers)
            for workers in WORKERS
        ]
        for number, (label, limit, workers) in enumerate(ways):
            where = Path(cache) / str(number)  # each way starts from an empty cache
            began = time.perf_counter()
            load_data(str(folder), cache_dir=where, cache_limit_gb=limit, loader_workers=workers)
            setup = time.perf_counter() - began
            began = time.perf_counter()
            data = load_data(str(folder), cache_dir=where, cache_limit_gb=limit, loader_workers=workers)
            reload = time.perf_counter() - began
            assert data.streamed == (limit == 0.0)
            seconds = []
            for _ in range(repeats):
                elapsed, result = epoch(data, seed=0)
                seconds.append(elapsed)
                if reference is None:
                    reference = result
                if not all(torch.equal(a, b) for a, b in zip(result, reference)):
                    raise SystemExit(f"{label}: batches differ from the cached array's")
            rates = [len(data) / s for s in seconds]
            figures[label] = {
                "setup_s": setup,
                "reload_s": reload,
                "median_images_s": statistics.median(rates),
                "best_images_s": max(rates),
                "repeats": repeats,
            }
            print(
                f"{label}: {figures[label]['median_images_s']:.0f} images/s median, "
                f"{figures[label]['best_images_s']:.0f} best; first load {setup:.1f} s, then {reload:.2f} s"
            )
    return figures, len(data)


def table(figures: dict[str, dict]) -> list[str]:
    lines = [
        "| read from | images/s (median) | best | first load s | later loads s |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in figures.items():
        lines.append(
            f"| {label} | {row['median_images_s']:.0f} | {row['best_images_s']:.0f} | {row['setup_s']:.1f} "
            f"| {row['reload_s']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="use (or make) the ImageFolder here, not a temporary one")
    parser.add_argument("--note", default="", help="a word on the machine's load, put in the section")
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="40 images, one repeat (smoke test)")
    args = parser.parse_args()
    images, repeats = (40, 1) if args.quick else (args.images, args.repeats)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        folder = args.folder or Path(scratch) / "folder"
        if not folder.is_dir() or not any(folder.iterdir()):
            began = time.perf_counter()
            make_folder(folder, images, args.size)
            print(f"made {images} JPEGs of {args.size} px in {time.perf_counter() - began:.1f} s")
        figures, count = measure(folder, repeats)
    lines = table(figures)
    print("\n".join(lines))
    if args.no_write:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import provenance_lines, update_section

    decoded_gb = count * args.size * args.size * 3 / 1e9
    body = [
        *provenance_lines("bench_data.py", args.note),
        "",
        f"One epoch (every image once, shuffled, batch {BATCH}, normalized, no augmentation, no model) over "
        f"{count} JPEGs of {args.size}x{args.size} px ({decoded_gb:.2f} GB decoded) made by upscaling "
        f"CIFAR-10 training images; {repeats} epochs per way. The batches of every way were checked to be "
        "identical. "
        "First load (from an empty cache): decoding every image and writing the cache (cached array), or "
        "reading every header and decoding the statistics sample (streamed); a later load reads the array, "
        "or the streamed set's small description, from the cache. Torch threads: 2; the workers only "
        "decode, normalization is done in the main process.",
    ]
    update_section(SECTION, [*body, "", *lines])


if __name__ == "__main__":
    main()
