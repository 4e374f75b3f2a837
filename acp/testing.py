"""Helpers for tests and benchmarks: random architectures of a real space, and a fake ChannelSpace.

``FakeSpace`` is a stand-in for ChannelSpace with exactly the members acp.core.architecture may use: a
chain of 3x3 convs + a linear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.layers import ElementwiseCall


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


class SyntheticMeter:
    """A latency "runtime" with a known answer, for :func:`acp.latency.build_latency_model`.

    A standalone layer at widths (cin, cout) takes ``layer_ms(layer, cin, cout)``: bilinear in the widths
    (linear for a depthwise conv and an element-wise call), so a table's interpolation is exact between
    its grid points. A whole model takes ``scale * sum(compute layer ms) + elementwise_scale * sum(timeable
    element-wise call ms) + per_million * other elements / 1e6 + overhead``. ``noise`` > 0 adds
    seeded multiplicative noise (>= 0, as timing noise is) to every layer measurement, over ``rounds``.
    """

    def __init__(
        self,
        space,
        *,
        scale=1.3,
        elementwise_scale=0.7,
        per_million=0.05,
        overhead=0.4,
        layer_overhead=0.003,
        batch_size=1,
        noise=0.0,
        rounds=2,
    ):
        self.space, self.batch_size, self.layer_overhead = space, batch_size, layer_overhead
        self.scale, self.per_million, self.overhead = scale, per_million, overhead
        self.elementwise_scale = elementwise_scale
        self.noise, self.rounds = noise, rounds
        self.layer_calls = self.model_calls = 0
        self._rng = np.random.default_rng(0)

    def layer_ms(self, layer, cin: int, cout: int) -> float:
        if isinstance(layer, ElementwiseCall):
            return self.per_million * layer.per_channel * cin * self.batch_size / 1e6
        positions = int(np.prod(layer.in_shape[2:])) if len(layer.in_shape) > 2 else 1
        positions //= int(np.prod(layer.stride)) if layer.stride else 1
        if layer.kind == "depthwise":
            return self.layer_overhead + 1e-6 * positions * cin
        return self.layer_overhead + 1e-8 * positions * cin * cout + 2e-7 * positions * (cin + cout)

    def layers(self, points) -> np.ndarray:
        self.layer_calls += 1
        exact = np.array([self.layer_ms(layer, cin, cout) for layer, cin, cout in points])[:, None]
        exact = np.repeat(exact, self.rounds, axis=1)
        if self.noise:
            exact = exact * (1 + self._rng.uniform(0, self.noise, size=exact.shape))
        return exact

    def truth(self, widths) -> np.ndarray:
        """The synthetic whole-model latency of a (P, G) width matrix."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        total = np.zeros(len(matrix))
        for layer in self.space.compute_layers:
            cin, cout = layer.in_width(matrix), layer.out_width(matrix)
            total += [self.layer_ms(layer, int(i), int(o)) for i, o in zip(cin, cout)]
        timed, elements = np.zeros(len(matrix)), np.zeros(len(matrix))
        for call in self.space.elementwise_calls:
            if call.timeable:
                timed += [self.layer_ms(call, int(width), 1) for width in call.width(matrix)]
            else:
                elements += call.per_channel * call.width(matrix) * self.batch_size
        return (
            self.scale * total
            + self.elementwise_scale * timed
            + self.per_million * elements / 1e6
            + self.overhead
        )

    def models(self, widths) -> np.ndarray:
        self.model_calls += 1
        return self.truth(widths)
