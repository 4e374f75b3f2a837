"""How many torch threads a piece of work runs with, chosen deliberately and restored afterwards.

Measured on 2 cores (benchmarks/RESULTS.md, bench_threads.py): a ResNet-20 training step at batch 128 takes
0.63x the time with 2 threads on an idle machine and 1.22x with one core busy; the demo's ResNet-8 at
batch 32 gains less idle (0.77x) and loses 3.3x when a core is busy. So training and evaluation use every
available core by default (``available_cores``), the demo one thread, and the proxy one thread per worker
process. Results depend on the thread count (reductions are split differently), so every stage that
computes something pins it.
"""

from __future__ import annotations

import contextlib
import os

import torch


def available_cores() -> int:
    """``OMP_NUM_THREADS`` when set, else the number of cores this process may run on."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isascii() and configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch threads (None: unchanged), restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
