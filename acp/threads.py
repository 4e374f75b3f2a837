"""How many torch threads a piece of work runs with, chosen deliberately and restored afterwards.

Small CIFAR-sized models gain little from a second intra-op thread, and on a busy machine OpenMP's
waiting threads slow small kernels down many times over (the demo's base training had not finished after
120 s with one of two cores busy; with one thread it took 14 s). Results also depend on the thread count
(reductions are split differently), so every stage that computes something pins it.
"""

from __future__ import annotations

import contextlib

import torch


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
