"""Training speed with 1 and 2 torch threads, on an idle machine and with one core kept busy.

Why: acp trains with ``[finetune].threads = 1`` by default (``acp train --threads``). This measures what
that costs on an idle machine and what a second thread costs when another process holds a core (a
search worker, a second finetune, anything). Each measurement is the wall time of ``--steps`` SGD steps
of acp's training loop (one epoch over ``steps * batch`` random images, validation on 8 images), after a
warm-up epoch; thread counts alternate within each round, and the median over ``--rounds`` is reported.
The busy core is a separate process spinning in a Python loop.

    python benchmarks/bench_threads.py            # ~5 minutes on 2 cores
    python benchmarks/bench_threads.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile

import numpy as np
import torch
from bench_common import provenance_lines, update_section

MODELS = (("resnet8_cifar", 16, 32), ("resnet20_cifar", 32, 128))  # name, image size, batch size


def spin(stop) -> None:
    while not stop.is_set():
        pass


def epoch_seconds(name: str, size: int, batch: int, steps: int, threads: int) -> float:
    from acp.data import ImageData
    from acp.models import create_model
    from acp.settings import Schedule
    from acp.train.loop import train

    rng = np.random.default_rng(0)
    count = steps * batch
    images = rng.integers(0, 256, size=(count + 8, size, size, 3), dtype=np.uint8)
    data = ImageData(
        images, rng.integers(0, 10, size=count + 8).astype(np.int64), list("0123456789"), "random"
    )
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    schedule = Schedule(epochs=2, batch_size=batch, augment=False)
    seconds = []
    with tempfile.TemporaryDirectory() as out:
        train(
            model,
            data,
            np.arange(count),
            np.arange(count, count + 8),
            schedule,
            out,
            progress=False,
            threads=threads,
            on_epoch=lambda record: seconds.append(record.seconds),
        )
    return seconds[-1]  # the second epoch: the first one warms up allocator and kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round, ResNet-8 only")
    args = parser.parse_args()
    steps, rounds, models = (2, 1, MODELS[:1]) if args.quick else (args.steps, args.rounds, MODELS)
    rows = []
    for busy in (False, True):
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=spin, args=(stop,), daemon=True) if busy else None
        if spinner is not None:
            spinner.start()
        try:
            for name, size, batch in models:
                timings = {1: [], 2: []}
                for round_index in range(rounds):
                    order = (1, 2) if round_index % 2 == 0 else (2, 1)
                    for threads in order:
                        timings[threads].append(epoch_seconds(name, size, batch, steps, threads))
                one, two = (statistics.median(timings[t]) for t in (1, 2))
                rows.append((name, batch, "one core busy" if busy else "idle", one / steps, two / steps))
                print(
                    f"{rows[-1][0]} batch {batch} {rows[-1][2]}: 1 thread {one / steps * 1000:.0f} ms/step, "
                    f"2 threads {two / steps * 1000:.0f} ms/step"
                )
        finally:
            if spinner is not None:
                stop.set()
                spinner.join()
    if args.quick:
        return
    lines = provenance_lines("bench_threads.py")
    lines += [
        "",
        f"Wall time per SGD step of acp's training loop (median of {rounds} alternating rounds of {steps}",
        "steps, after a warm-up epoch). 'one core busy': another process spins on one of the two cores.",
        "",
        "| model | batch | machine | 1 thread (ms/step) | 2 threads (ms/step) | 2 threads / 1 thread |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch, machine, one, two in rows:
        lines.append(
            f"| {name} | {batch} | {machine} | {one * 1000:.0f} | {two * 1000:.0f} | {two / one:.2f} |"
        )
    update_section("Training threads (bench_threads.py)", lines)


if __name__ == "__main__":
    main()
