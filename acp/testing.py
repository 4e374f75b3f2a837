"""Helpers for tests and benchmarks: random architectures of a real space, and a fake ChannelSpace.

``FakeSpace`` is a stand-in for ChannelSpace with exactly the members acp.core.architecture may use: a
chain of 3x3 convs + a linear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from acp.core.architecture import Architecture, ModelIdentity


@dataclass(frozen=True)
class FakeGroup:
    id: str
    full_width: int
    min_width: int
    round_to: int

    @property
    def max_width(self) -> int:
        return self.full_width

    def allowed_widths(self) -> np.ndarray:
        multiples = {
            w for w in range(self.round_to, self.full_width + 1, self.round_to) if w >= self.min_width
        }
        return np.array(sorted(multiples | {self.full_width}), dtype=np.int64)


class FakeSpace:
    """Groups in a chain of stride-1 3x3 convs on ``input_shape`` images, then a linear to ``num_classes``."""

    def __init__(self, groups, *, input_shape=(1, 3, 32, 32), num_classes=10):
        self.groups = tuple(groups)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.base_macs, self.base_params = self.cost({g.id: g.full_width for g in self.groups})

    def cost(self, widths):
        if not isinstance(widths, Mapping):
            widths = dict(zip([g.id for g in self.groups], widths))
        _, in_channels, height, width_px = self.input_shape
        macs = params = 0
        for group in self.groups:
            width = int(widths[group.id])
            macs += in_channels * width * 9 * height * width_px
            params += in_channels * width * 9 + 2 * width
            in_channels = width
        classes = self.num_classes
        return macs + in_channels * classes, params + in_channels * classes + classes


def random_architecture(
    space, identity: ModelIdentity, rng: np.random.Generator, *, settings: Mapping | None = None
) -> Architecture:
    """An architecture with random allowed widths and random kept channels (tests and benchmarks)."""
    widths, keep = {}, {}
    for group in space.groups:
        width = int(rng.choice(group.allowed_widths()))
        widths[group.id] = width
        keep[group.id] = np.sort(rng.choice(group.full_width, size=width, replace=False)).tolist()
    return Architecture.from_widths(
        space,
        identity,
        widths,
        keep,
        space_settings=dict(settings if settings is not None else space.settings),
        provenance={"source": "manual", "created": None},
    )
