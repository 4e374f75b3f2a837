"""Choosing ``[space].round_to`` from measurements: where are the latency cliffs of this runtime?

CPU kernels process channels in SIMD blocks (8 or 16 floats), so a conv with 17 output channels often
takes as long as one with 24 and longer than one with 16. A width that is no faster than a wider one only
costs accuracy, so such widths should not be in the search space.

:func:`rounding_scan` times the layers that hold most of the base latency at *every* output width of a
window below their full width (input width full), on the same runtime and in the same interleaved rounds as
the tables. :func:`suggest_round_to` then picks the largest ``r`` among 1, 2, 4, 8, 16, 32 for which
rounding any scanned width *up* to a multiple of ``r`` costs at most ``tolerance`` more time (median over
the widths, per layer; the worst layer decides): the widths it removes are (nearly) dominated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acp.core.layers import DEPTHWISE, LINEAR

CANDIDATES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class RoundingScan:
    """Measured ms of each scanned layer at consecutive output widths."""

    layers: tuple[str, ...]
    widths: tuple[tuple[int, ...], ...]  # per layer, ascending and consecutive
    ms: tuple[np.ndarray, ...]

    def rounding_cost(self, step: int) -> float:
        """Worst layer's median relative extra time of rounding every scanned width up to a multiple of
        ``step`` (or to the full width, which the space always allows)."""
        worst = 0.0
        for widths, ms in zip(self.widths, self.ms):
            lookup, top = dict(zip(widths, ms)), widths[-1]
            ratios = [lookup[min(-(-w // step) * step, top)] / lookup[w] for w in widths]
            worst = max(worst, float(np.median(ratios)) - 1.0)
        return worst


def rounding_scan(latency, space, meter, *, layers: int = 3, window: int = 64) -> RoundingScan:
    """Scan the ``layers`` dense layers with the largest share of the predicted base latency."""
    full = space.full_widths()[None, :]
    shares = latency.layer_ms(full)[0]
    chosen, seen = [], set()
    for index in np.argsort(-shares, kind="stable"):
        layer = space.compute_layers[index]
        if layer.kind in (DEPTHWISE, LINEAR) or not layer.out_width.varies or layer.geometry() in seen:
            continue
        seen.add(layer.geometry())
        chosen.append(layer)
        if len(chosen) == layers:
            break
    points, spans = [], []
    for layer in chosen:
        cin = int(layer.in_width(full)[0])
        top = int(layer.out_width(full)[0])
        widths = tuple(range(max(1, top - window + 1), top + 1))
        spans.append(widths)
        points += [(layer, cin, width) for width in widths]
    measured = np.asarray(meter.layers(points)).min(axis=1) if points else np.zeros(0)
    per_layer, start = [], 0
    for widths in spans:
        per_layer.append(measured[start : start + len(widths)])
        start += len(widths)
    return RoundingScan(tuple(layer.module for layer in chosen), tuple(spans), tuple(per_layer))


def suggest_round_to(
    scan: RoundingScan, tolerance: float = 0.02, *, narrowest: int | None = None
) -> tuple[int, dict[int, float]]:
    """(the largest free step, {step: rounding cost}) over :data:`CANDIDATES`; steps above a quarter of
    the ``narrowest`` searchable group's full width are not considered (it would keep too few widths)."""
    steps = [step for step in CANDIDATES if narrowest is None or step <= max(1, narrowest // 4)]
    costs = {step: scan.rounding_cost(step) for step in steps}
    free = [step for step, cost in costs.items() if cost <= tolerance]
    return (max(free) if free else 1), costs
