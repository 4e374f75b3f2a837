"""A cheap, deterministic stand-in for the proxy evaluator: for tests and engine benchmarks.

``SyntheticEvaluator(space)`` scores a width vector with a smooth landscape whose optimum is a fixed
"preferred" keep-ratio profile: score = 1 - mean squared distance between the candidate's keep ratios
and the profile (plus an optional sleep to mimic an expensive evaluation). It needs no data and no
torch, pickles in microseconds, and gives the same score for the same widths in any process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticResult:
    score: float
    accuracy: float
    loss: float
    macs: int
    params: int
    seconds: float
    status: str = "ok"


class SyntheticEvaluator:
    """Deterministic evaluator over ``space``; ``fail_when(widths) -> bool`` makes chosen candidates raise."""

    def __init__(self, space, *, seed: int = 0, sleep: float = 0.0, fail_when=None, identity=None):
        self.space = space
        self.identity = identity
        rng = np.random.default_rng(seed)
        self.profile = rng.uniform(0.2, 1.0, size=len(space.groups))
        self.full = np.asarray(space.full_widths(), dtype=np.float64)
        self.sleep = float(sleep)
        self.fail_when = fail_when

    def evaluate(self, widths) -> SyntheticResult:
        began = time.perf_counter()
        widths = np.asarray(widths, dtype=np.int64)
        if self.fail_when is not None and self.fail_when(widths):
            raise RuntimeError(f"synthetic failure for widths {widths.tolist()}")
        if self.sleep:
            time.sleep(self.sleep)
        macs, params = self.space.cost(widths)
        distance = float(np.mean((widths / self.full - self.profile) ** 2))
        score = 1.0 - distance
        return SyntheticResult(score, score, distance, int(macs), int(params), time.perf_counter() - began)

    def architecture(self, widths, *, budget=None, provenance=None):
        """An Architecture keeping each group's first ``width`` channels (there is no real criterion)."""
        from acp.core.architecture import Architecture, ModelIdentity

        identity = self.identity or ModelIdentity("<synthetic>", None, tuple(self.space.input_shape[1:]), {})
        widths = [int(w) for w in widths]
        keep = {group.id: range(width) for group, width in zip(self.space.groups, widths)}
        return Architecture.from_widths(
            self.space,
            identity,
            widths,
            keep,
            budget=budget,
            space_settings=dict(self.space.settings),
            provenance={"criterion": "first", **dict(provenance or {})},
        )
