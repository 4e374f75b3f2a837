"""CPU latency of a model: median wall time of repeated forward passes after a warm-up.

Measured in eval mode under ``torch.inference_mode`` with channels-last input, a fixed thread count,
and a fixed input, with glibc's malloc thresholds fixed (:mod:`acp.latency.allocator`); the median is
robust to the odd scheduling hiccup.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from acp.latency.allocator import steady_allocator


@dataclass(frozen=True)
class Latency:
    batch_size: int
    median_ms: float
    min_ms: float
    repeats: int
    threads: int

    @property
    def images_per_second(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    min_seconds: float = 0.0,
) -> Latency:
    """Median forward time of ``model`` on a ``(batch_size, *input_size)`` input.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards). Repeats continue
    past ``repeats`` until ``min_seconds`` of measurements have accumulated.
    """
    steady_allocator()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    example = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))
    example = example.contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example)
            timings: list[float] = []
            started = time.perf_counter()
            while len(timings) < repeats or time.perf_counter() - started < min_seconds:
                begin = time.perf_counter()
                model(example)
                timings.append(time.perf_counter() - begin)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    return Latency(
        batch_size,
        statistics.median(timings) * 1000,
        min(timings) * 1000,
        len(timings),
        threads or previous_threads,
    )
