"""Budget repair: project any vector of keep ratios onto the budget (MACs, params, latency) before scoring.

Every candidate the search evaluates has gone through :meth:`Budget.repair`:

1. *scale*: the widths ``snap(scale * keep_ratio * full_width)`` grow monotonically with ``scale``, and so
   do their MACs and params (the cost model is a polynomial with non-negative coefficients) and their
   predicted latency (any monotone cost: :mod:`acp.latency`'s predictor is one by construction). Bisection on
   one global ``scale`` per particle finds the largest widths that still fit the budget, so the particle's
   *shape* (which groups are wide, which narrow) is kept;
2. *fix-up*: rounding leaves a gap below the target; single allowed-width steps are added greedily, the
   group furthest below its scaled ratio first, while the candidate still fits.

The result fits the budget exactly (integer MACs/params from the exact cost model) and usually lies within
1% below the binding target; when rounding makes that impossible the gap is reported by :meth:`Budget.gap`
and the search warns past ``[search].tolerance``, never hidden.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from acp.errors import UserError

BISECTION_STEPS = 48


def _ratio(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"budget --{name}: expected a ratio in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise UserError(f"budget --{name}: expected a ratio in (0, 1], got {value!r}")
    return float(value)


class Budget:
    """A MACs ("flops"), params and/or latency budget, checked against ``space`` on creation.

    ``flops`` and ``params`` are ratios of the base model's counts. ``latency`` (a ratio of the base
    model's predicted latency) and ``latency_ms`` (milliseconds) need ``latency_model``: a callable
    ``(P, G) widths -> (P,) ms`` that never decreases when a width grows, with a ``base_ms`` attribute
    (:class:`acp.latency.LatencyModel`). Every given limit must hold; the tightest one binds.

    Raises UserError when no limit is given, or when even the smallest widths the space allows exceed
    one (the message names the minimum achievable value).
    """

    def __init__(
        self,
        space,
        *,
        flops: float | None = None,
        params: float | None = None,
        latency: float | None = None,
        latency_ms: float | None = None,
        latency_model=None,
    ):
        self.space = space
        self.flops = _ratio("flops", flops)
        self.params = _ratio("params", params)
        self.latency = _ratio("latency", latency)
        self.latency_ms = _milliseconds(latency_ms)
        if all(value is None for value in (self.flops, self.params, self.latency, self.latency_ms)):
            raise UserError(
                "budget: give --flops R, --params R, --latency R and/or --latency-ms MS "
                "(ratios of the base model, or milliseconds)"
            )
        self.max_macs = None if self.flops is None else self.flops * space.base_macs
        self.max_params = None if self.params is None else self.params * space.base_params
        self.full = np.asarray(space.full_widths(), dtype=np.int64)
        self.minimum = np.asarray(space.min_widths(), dtype=np.int64)
        self.step = np.array([group.round_to for group in space.groups], dtype=np.int64)
        min_macs, min_params = space.cost(self.minimum)
        self.min_flops_ratio = min_macs / space.base_macs
        self.min_params_ratio = min_params / space.base_params
        for name, ratio, least in (
            ("flops", self.flops, self.min_flops_ratio),
            ("params", self.params, self.min_params_ratio),
        ):
            if ratio is not None and ratio < least:
                smallest = math.ceil(least * 10_000) / 10_000
                raise UserError(
                    f"budget --{name} {ratio:g} is infeasible: the smallest widths the space allows "
                    f"({self._space_limits()}) keep {least:.2%} of the base "
                    f"{'MACs' if name == 'flops' else 'params'}; "
                    f"the minimum achievable --{name} is {smallest:g}"
                )
        self.latency_model = latency_model
        self.max_ms = None
        if self.latency is not None or self.latency_ms is not None:
            self._set_latency_limit()

    def _space_limits(self) -> str:
        settings = self.space.settings
        return f"min_keep={settings.get('min_keep')}, round_to={settings.get('round_to')}"

    def _set_latency_limit(self) -> None:
        if self.latency_model is None:
            raise UserError("budget --latency/--latency-ms: needs a latency table ([latency] settings)")
        base_ms = float(self.latency_model.base_ms)
        min_ms = float(np.asarray(self.latency_model(self.minimum[None, :]))[0])
        limits = []
        if self.latency is not None:
            limits.append(self.latency * base_ms)
        if self.latency_ms is not None:
            limits.append(self.latency_ms)
        self.max_ms = min(limits)
        self.base_ms, self.min_ms = base_ms, min_ms
        if self.max_ms < min_ms:
            given = f"--latency {self.latency:g}" if self.latency is not None else ""
            if self.latency_ms is not None and (
                self.latency is None or self.latency_ms < self.latency * base_ms
            ):
                given = f"--latency-ms {self.latency_ms:g}"
            raise UserError(
                f"budget {given} is infeasible: the smallest widths the space allows "
                f"({self._space_limits()}) take {min_ms:.3g} ms, {min_ms / base_ms:.2%} of the base model's "
                f"{base_ms:.3g} ms; the minimum "
                f"achievable is --latency {math.ceil(min_ms / base_ms * 10_000) / 10_000:g} "
                f"(--latency-ms {math.ceil(min_ms * 1000) / 1000:g})"
            )

    def as_dict(self) -> dict:
        document = {"flops": self.flops, "params": self.params}
        if self.latency is not None or self.latency_ms is not None:
            document.update(latency=self.latency, latency_ms=self.latency_ms)
        return document

    def describe(self) -> str:
        parts = []
        if self.flops is not None:
            parts.append(f"MACs <= {self.flops:.1%}")
        if self.params is not None:
            parts.append(f"params <= {self.params:.1%}")
        if self.max_ms is not None:
            parts.append(f"predicted latency <= {self.max_ms:.3g} ms ({self.max_ms / self.base_ms:.1%})")
        return " and ".join(parts)

    # --- checks --------------------------------------------------------------------------------------

    def predicted_ms(self, widths) -> np.ndarray | None:
        """Predicted latency of a (P, G) width matrix, or None without a latency budget."""
        if self.max_ms is None:
            return None
        return np.asarray(
            self.latency_model(np.atleast_2d(np.asarray(widths, dtype=np.int64))), dtype=np.float64
        )

    def fits(self, macs, params, latency_ms=None) -> np.ndarray | bool:
        """Whether costs (scalars or arrays) are within the budget (``latency_ms`` needed with a
        latency budget)."""
        ok = np.ones(np.shape(macs), dtype=bool)
        if self.max_macs is not None:
            ok &= np.asarray(macs) <= self.max_macs
        if self.max_params is not None:
            ok &= np.asarray(params) <= self.max_params
        if self.max_ms is not None:
            ok &= np.asarray(latency_ms).reshape(np.shape(macs)) <= self.max_ms
        return ok if ok.ndim else bool(ok)

    def gap(self, macs, params, latency_ms=None) -> np.ndarray | float:
        """Relative distance below the binding target: 0 = exactly on it, 0.01 = 1% below."""
        gaps = []
        if self.max_macs is not None:
            gaps.append(1.0 - np.asarray(macs, dtype=np.float64) / self.max_macs)
        if self.max_params is not None:
            gaps.append(1.0 - np.asarray(params, dtype=np.float64) / self.max_params)
        if self.max_ms is not None:
            gaps.append(1.0 - np.asarray(latency_ms, dtype=np.float64).reshape(np.shape(macs)) / self.max_ms)
        result = np.minimum.reduce(gaps) if len(gaps) > 1 else gaps[0]
        return result if np.ndim(result) else float(result)

    def latency_record(self, widths) -> dict | None:
        """For an architecture file: where latency was measured and the prediction for ``widths``
        (a vector), or None without a latency budget."""
        if self.max_ms is None:
            return None
        where = dict(getattr(self.latency_model, "record", dict)())
        predicted = float(self.predicted_ms(np.asarray(widths)[None, :])[0])
        return {**where, "base_ms": self.base_ms, "predicted_ms": predicted}

    def fits_widths(self, widths) -> np.ndarray:
        """:meth:`fits` of a (P, G) width matrix."""
        return self._fits(np.atleast_2d(np.asarray(widths, dtype=np.int64)))

    def widths_gap(self, widths) -> np.ndarray:
        """:meth:`gap` of a (P, G) width matrix."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        macs, params = self.space.cost(matrix)
        return self.gap(macs, params, self.predicted_ms(matrix))

    # --- repair --------------------------------------------------------------------------------------

    def repair(self, keep_ratios) -> np.ndarray:
        """(P, G) keep ratios (or one vector) -> allowed integer widths that fit the budget, as close to
        it as rounding allows, preserving each particle's relative shape."""
        ratios = np.asarray(keep_ratios, dtype=np.float64)
        single = ratios.ndim == 1
        ratios = np.atleast_2d(ratios)
        if ratios.shape[1] != len(self.full) or not np.all(np.isfinite(ratios)):
            raise ValueError(f"keep ratios must be finite with {len(self.full)} columns, got {ratios.shape}")
        desired = np.clip(ratios, 1e-6, None) * self.full  # a zero ratio would make the scale meaningless
        low = np.zeros(len(desired))  # widths(low) fit: they are the minimum widths
        high = (self.full / desired).max(axis=1)  # widths(high) are the full widths
        full_fits = self._fits(self._widths(desired, high))
        for _ in range(BISECTION_STEPS):
            middle = 0.5 * (low + high)
            fits = self._fits(self._widths(desired, middle))
            low = np.where(fits, middle, low)
            high = np.where(fits, high, middle)
        widths = self._widths(desired, low)
        for row in np.flatnonzero(~full_fits):
            widths[row] = self._fill(widths[row], desired[row] * high[row])
        widths[full_fits] = self.full
        return widths[0] if single else widths

    def _widths(self, desired: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return self.space.snap(np.clip(desired * scale[:, None], self.minimum, self.full))

    def _fits(self, widths: np.ndarray) -> np.ndarray:
        macs, params = self.space.cost(widths)
        return self.fits(macs, params, self.predicted_ms(widths))

    def _fill(self, widths: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Greedy fix-up of rounding: add one allowed step at a time while the candidate still fits."""
        widths = widths.copy()
        blocked = np.zeros(len(widths), dtype=bool)
        while True:
            grow = ~blocked & (widths < self.full)
            if not grow.any():
                return widths
            candidates = np.flatnonzero(grow)
            stepped = np.minimum(
                (widths[candidates] // self.step[candidates] + 1) * self.step[candidates],
                self.full[candidates],
            )
            trial = np.repeat(widths[None, :], len(candidates), axis=0)
            trial[np.arange(len(candidates)), candidates] = stepped
            fits = self._fits(trial)
            blocked[candidates[~fits]] = True  # costs only grow: a step that does not fit never will
            if not fits.any():
                return widths
            shortfall = (target[candidates] - widths[candidates]) / self.full[candidates]
            shortfall[~fits] = -np.inf
            best = int(np.argmax(shortfall))  # first maximum: ties go to the earlier group
            widths[candidates[best]] = stepped[best]


def _milliseconds(value: object) -> float | None:
    if value is None:
        return None
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value <= 0:
        raise UserError(f"budget --latency-ms: expected a positive number of milliseconds, got {value!r}")
    return float(value)


def budget_from(space, budget: Mapping | Budget, latency_model=None) -> Budget:
    if isinstance(budget, Budget):
        return budget
    return Budget(space, **dict(budget), latency_model=latency_model)
