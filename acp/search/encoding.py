"""The search's coordinates: one keep ratio per channel group, in ``[min_width / full_width, 1]``.

A particle's position is a vector of keep ratios; decoding multiplies by the full widths, and the budget
repair (:mod:`acp.core.budget`) turns that into allowed integer widths. Ratios (not raw widths) make
every dimension the same scale, so one velocity clamp and one set of PSO coefficients fit all groups.
"""

from __future__ import annotations

import numpy as np


class KeepRatioEncoding:
    """Bounds and conversions between keep ratios and widths for a ChannelSpace."""

    def __init__(self, space):
        self.full = np.asarray(space.full_widths(), dtype=np.int64)
        self.lower = np.asarray(space.min_widths(), dtype=np.float64) / self.full
        self.upper = np.ones(len(self.full), dtype=np.float64)

    @property
    def dimensions(self) -> int:
        return len(self.full)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower, self.upper

    def encode(self, widths) -> np.ndarray:
        """Integer widths (G,) or (P, G) -> keep ratios."""
        return np.asarray(widths, dtype=np.float64) / self.full

    def decode(self, keep_ratios) -> np.ndarray:
        """Keep ratios -> real-valued widths (before rounding and budget repair)."""
        return np.clip(np.asarray(keep_ratios, dtype=np.float64), self.lower, self.upper) * self.full
