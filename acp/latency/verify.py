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
2. if ``r <= a x (1 + tolerance)`` the searched candidate is kept; otherwise the predictor's limit is
   scaled by ``a / r`` (its local error) and the *searched* widths are repaired onto that tighter limit --
   same shape, every other budget still met -- and measured again;
3. once one candidate meets the budget and another misses it, the limit is bracketed: the next limit is
   interpolated between the two (secant on predicted ms against measured ratio, kept inside the middle
   half of the bracket), so a first shrink that overshot (a ResNet-20 at 0.74 of the base under a 0.90
   budget) grows back towards the budget. It stops when a kept candidate is within ``tolerance`` below
   the budget, when the repair gives no new widths, or after ``steps`` measurements; the widest candidate
   that met the budget is kept (else the last one measured).

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
    """The measurements, first (the searched widths) to last, which one is kept, and whether it met the
    budget."""

    measurements: tuple[Measurement, ...]
    kept: int  # index into measurements
    met: bool
    tolerance: float

    @property
    def kept_measurement(self) -> Measurement:
        return self.measurements[self.kept]

    @property
    def widths(self) -> np.ndarray:
        return np.asarray(self.kept_measurement.widths, dtype=np.int64)

    @property
    def shrunk(self) -> bool:
        return self.kept_measurement.widths != self.measurements[0].widths

    def record(self) -> dict:
        """The fields an architecture file's ``latency`` gets (see acp.core.architecture)."""
        kept = self.kept_measurement
        return {
            "measured_ms": kept.measured_ms,
            "base_measured_ms": kept.base_measured_ms,
            "measured_ratio": kept.ratio,
            "measured_budget_met": self.met,
            "tolerance": self.tolerance,
            "searched_widths": list(self.measurements[0].widths),
            "measurements": len(self.measurements),
        }

    def lines(self) -> list[str]:
        first, last = self.measurements[0], self.kept_measurement
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
    searched = np.asarray(widths, dtype=np.int64)
    measurements: list[Measurement] = []
    candidate: np.ndarray | None = searched
    while candidate is not None:
        measurements.append(_measure(budget, measure, full, candidate))
        if len(measurements) >= steps:
            break
        candidate = _next_candidate(budget, searched, measurements, tolerance)
    met = [index for index, m in enumerate(measurements) if m.meets(tolerance)]
    kept = max(met, key=lambda index: measurements[index].predicted_ms) if met else len(measurements) - 1
    return MeasuredCheck(tuple(measurements), kept, bool(met), tolerance)


def _measure(budget: Budget, measure, full: np.ndarray, widths: np.ndarray) -> Measurement:
    rounds = np.asarray(measure(np.vstack([full, widths])), dtype=np.float64).reshape(2, -1)
    base_ms, candidate_ms = (float(v) for v in np.median(rounds, axis=1))
    measurement = Measurement(
        tuple(int(w) for w in widths),
        float(budget.predicted_ms(widths[None, :])[0]),
        candidate_ms,
        base_ms,
        float(paired_ratios(rounds)[1]),
        allowed_ratio(budget, base_ms),
    )
    log.info(
        "measured %.4g ms (%.3f of the base), allowed %.3f",
        candidate_ms,
        measurement.ratio,
        measurement.allowed_ratio,
    )
    return measurement


def _next_candidate(
    budget: Budget, searched: np.ndarray, measurements: list[Measurement], tolerance: float
) -> np.ndarray | None:
    """The next widths to measure (module docstring), or None when the check is done."""
    met = [m for m in measurements if m.meets(tolerance)]
    missed = [m for m in measurements if not m.meets(tolerance)]
    if not missed:
        return None  # the searched widths meet the budget
    above = min(missed, key=lambda m: m.predicted_ms)  # the fastest-predicted miss
    if not met:
        limit = above.predicted_ms * above.allowed_ratio / above.ratio
        candidate = _repaired(budget, searched, limit)
        while candidate is not None and np.array_equal(candidate, above.widths):
            limit *= EXTRA_SHRINK
            candidate = _repaired(budget, searched, limit)
        return candidate  # None: the predictor's minimum is reached, nothing smaller to measure
    below = max(met, key=lambda m: m.predicted_ms)  # the widest-predicted hit
    if below.ratio >= below.allowed_ratio * (1.0 - tolerance) or below.predicted_ms >= above.predicted_ms:
        return None  # close enough to the budget (or nothing left between)
    low, high = below.predicted_ms, above.predicted_ms
    rise = above.ratio / above.allowed_ratio - below.ratio / below.allowed_ratio
    secant = low + (1.0 - below.ratio / below.allowed_ratio) * (high - low) / rise if rise > 0 else low
    limit = min(max(secant, low + 0.25 * (high - low)), high - 0.25 * (high - low))
    candidate = _repaired(budget, searched, limit)
    tried = {m.widths for m in measurements}
    if candidate is None or tuple(int(w) for w in candidate) in tried:
        return None
    return candidate


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
