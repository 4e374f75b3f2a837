"""The winner, measured: time the searched architecture against the base model on the budget's runtime and
shrink it until its *measured* latency meets the budget.

The search ranks candidates by the predictor (:class:`acp.latency.LatencyModel`), which is fitted to
whole models but still misses by a few percent, more at widths where the runtime switches kernels, and the
machine itself drifts between building the table and the end of the search. So the architecture a search
returns is measured once more, base model and candidate interleaved in the same rounds:

1. the candidate's ratio ``r`` to the base is the median over rounds of its time / the base's time in the
   same round (:func:`acp.latency.runtimes.paired_ratios`: a slow phase of a shared machine hits both
   alike); ``m`` and ``b`` are their median ms; the allowed ratio ``a`` is ``latency`` and/or
   ``latency_ms / b`` (the tighter);
2. if ``r <= a x (1 + tolerance)`` the candidate is kept; otherwise the predictor's limit is scaled by
   ``a / r`` (its local error) and the candidate is repaired onto that tighter limit -- same shape, every
   other budget still met -- and measured again, up to ``steps`` measurements.

The search itself stays deterministic (history, checkpoints and the searched widths are bit-exact); only
this last step depends on the clock, and what it measured is recorded next to the architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acp.core.budget import Budget
from acp.errors import UserError
from acp.latency.runtimes import paired_ratios

log = logging.getLogger(__name__)

EXTRA_SHRINK = 0.98  # when rounding leaves the repaired widths unchanged, tighten a further 2%


@dataclass(frozen=True)
class Measurement:
    widths: tuple[int, ...]
    predicted_ms: float
    measured_ms: float  # median over rounds
    base_measured_ms: float
    ratio: float  # median over rounds of candidate / base in the same round
    allowed_ratio: float  # the budget as a ratio to this measurement's base

    @property
    def allowed_ms(self) -> float:
        return self.allowed_ratio * self.base_measured_ms

    def meets(self, tolerance: float) -> bool:
        return self.ratio <= self.allowed_ratio * (1.0 + tolerance)

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "base_measured_ms": self.base_measured_ms,
            "ratio": self.ratio,
            "allowed_ratio": self.allowed_ratio,
        }


@dataclass(frozen=True)
class MeasuredCheck:
    """The measurements, first (the searched widths) to last (the widths kept), and whether the last met
    the budget."""

    measurements: tuple[Measurement, ...]
    met: bool
    tolerance: float

    @property
    def widths(self) -> np.ndarray:
        return np.asarray(self.measurements[-1].widths, dtype=np.int64)

    @property
    def shrunk(self) -> bool:
        return self.measurements[-1].widths != self.measurements[0].widths

    def record(self) -> dict:
        """The fields an architecture file's ``latency`` gets (see acp.core.architecture)."""
        last = self.measurements[-1]
        return {
            "measured_ms": last.measured_ms,
            "base_measured_ms": last.base_measured_ms,
            "measured_ratio": last.ratio,
            "measured_budget_met": self.met,
            "tolerance": self.tolerance,
            "searched_widths": list(self.measurements[0].widths),
            "measurements": len(self.measurements),
        }

    def lines(self) -> list[str]:
        first, last = self.measurements[0], self.measurements[-1]
        lines = [
            f"measured latency of the searched architecture: {first.measured_ms:.3g} ms = "
            f"{first.ratio:.3f} of the base ({first.base_measured_ms:.3g} ms; predicted "
            f"{first.predicted_ms:.3g} ms)"
        ]
        if self.shrunk:
            lines.append(
                f"shrunk to meet the measured budget: {last.measured_ms:.3g} ms = {last.ratio:.3f} of the "
                f"base after {len(self.measurements)} measurements"
            )
        if not self.met:
            lines.append(
                f"WARNING: measured {last.ratio:.3f} of the base ({last.measured_ms:.3g} ms) is above the "
                f"budget's {last.allowed_ratio:.3f} (+{self.tolerance:.0%} tolerance) after "
                f"{len(self.measurements)} measurements"
            )
        return lines


def allowed_ratio(budget: Budget, base_measured_ms: float) -> float:
    """The latency budget as a ratio to the base model measured now: ``latency`` and/or ``latency_ms`` /
    the base's ms."""
    limits = []
    if budget.latency is not None:
        limits.append(budget.latency)
    if budget.latency_ms is not None:
        limits.append(budget.latency_ms / base_measured_ms)
    if not limits:
        raise ValueError("the budget has no latency limit")
    return min(limits)


def meet_measured_budget(
    budget: Budget,
    measure: Callable[[np.ndarray], np.ndarray],
    widths,
    *,
    tolerance: float,
    steps: int,
) -> MeasuredCheck:
    """Measure ``widths`` (and shrink them, see the module docstring). ``measure(matrix) -> ms`` times
    every row of a (K, G) width matrix in interleaved rounds, (K, rounds) ms (or (K,): one round); row 0
    is always the full widths."""
    space = budget.space
    full = space.full_widths()
    widths = np.asarray(widths, dtype=np.int64)
    limit_ms = float(budget.predicted_ms(widths[None, :])[0])
    measurements: list[Measurement] = []
    while True:
        rounds = np.asarray(measure(np.vstack([full, widths])), dtype=np.float64).reshape(2, -1)
        base_ms, candidate_ms = (float(v) for v in np.median(rounds, axis=1))
        predicted = float(budget.predicted_ms(widths[None, :])[0])
        measurement = Measurement(
            tuple(int(w) for w in widths),
            predicted,
            candidate_ms,
            base_ms,
            float(paired_ratios(rounds)[1]),
            allowed_ratio(budget, base_ms),
        )
        measurements.append(measurement)
        log.info(
            "measured %.4g ms (%.3f of the base), allowed %.3f", candidate_ms, measurement.ratio,
            measurement.allowed_ratio,
        )
        if measurement.meets(tolerance) or len(measurements) >= steps:
            return MeasuredCheck(tuple(measurements), measurement.meets(tolerance), tolerance)
        limit_ms = min(limit_ms, predicted) * measurement.allowed_ratio / measurement.ratio
        shrunk = _repaired(budget, widths, limit_ms)
        while shrunk is not None and np.array_equal(shrunk, widths):
            limit_ms *= EXTRA_SHRINK
            shrunk = _repaired(budget, widths, limit_ms)
        if shrunk is None:  # the predictor's minimum is reached: nothing smaller to measure
            return MeasuredCheck(tuple(measurements), False, tolerance)
        widths = shrunk


def _repaired(budget: Budget, widths: np.ndarray, limit_ms: float) -> np.ndarray | None:
    """``widths`` repaired onto ``budget`` with its latency limit replaced by ``limit_ms`` predicted ms
    (None when no allowed widths are that fast)."""
    try:
        tighter = Budget(
            budget.space,
            flops=budget.flops,
            params=budget.params,
            latency_ms=limit_ms,
            latency_model=budget.latency_model,
        )
    except UserError:
        return None
    return tighter.repair(widths / budget.space.full_widths())
