"""The layers whose run time depends on the widths: their geometry and their widths as affine maps.

The latency model (:mod:`acp.latency`) needs, for every forward call of a Conv2d or Linear, what a
standalone copy of that layer looks like (kernel, stride, padding, input size) and how its input and
output widths follow the group widths; and, for every element-wise call (BatchNorm, activations, pools),
how many elements it touches. Both come from the same graph analysis as the exact cost model, so a
:class:`~acp.core.space.ChannelSpace` carries them as plain data.

A width is ``offset + sum(coefficient_g * w_g)`` over the searchable groups (non-negative coefficients:
widths never shrink when a group grows), so a whole swarm's widths are one integer matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn
from torch_pruning.utils import op_counter

from acp.core.graph import Analysis, ChannelExpr

DENSE, DEPTHWISE, FIXED, LINEAR = "conv", "depthwise", "fixed_conv", "linear"
ELEMENTWISE = "elementwise"  # the kind of an element-wise call's latency table


@dataclass(frozen=True)
class AffineWidth:
    """``offset + sum(m * w[column] for column, m in terms)`` for a (P, G) width matrix ``w``."""

    offset: int
    terms: tuple[tuple[int, int], ...] = ()

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        value = np.full(widths.shape[0], self.offset, dtype=np.int64)
        for column, multiplier in self.terms:
            value += multiplier * widths[:, column]
        return value

    @property
    def varies(self) -> bool:
        return bool(self.terms)

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[int, int]:
        """Smallest and largest value over the box ``low <= w <= high`` (coefficients are >= 0)."""
        return int(self(low[None, :])[0]), int(self(high[None, :])[0])


@dataclass(frozen=True)
class ComputeLayer:
    """One forward call of a Conv2d (dense, depthwise or a fixed grouped conv) or Linear."""

    module: str
    kind: str  # DENSE, DEPTHWISE, FIXED or LINEAR
    in_shape: tuple[int, ...]  # the full model's input to this call, batch 1
    in_width: AffineWidth
    out_width: AffineWidth
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1  # FIXED convs only (dense: 1, depthwise: the width)
    bias: bool = False

    def geometry(self) -> tuple:
        """Everything but the widths: calls with equal geometry and widths take the same time."""
        spatial = tuple(self.in_shape[2:]) if self.kind != LINEAR else tuple(self.in_shape[1:-1])
        return (
            self.kind,
            spatial,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias,
        )


@dataclass(frozen=True)
class ElementwiseCall:
    """A call that touches every element once or twice (BN, activation, pool): ``per_channel * width``.

    ``timeable`` calls (BatchNorm/InstanceNorm, and modules without parameters or buffers) can be timed as
    a standalone copy at any width: ``signature`` is what such a copy depends on besides the width and the
    input size, ``in_shape`` the full model's input to the call (batch 1)."""

    module: str
    per_channel: int
    width: AffineWidth
    in_shape: tuple[int, ...] = ()
    signature: str = ""
    timeable: bool = False

    def geometry(self) -> tuple:
        """Calls with equal geometry and width take the same time (one latency table)."""
        return (ELEMENTWISE, self.signature, tuple(self.in_shape[2:]))


def standalone_signature(module: nn.Module) -> tuple[str, bool]:
    """(what a standalone copy of an element-wise module depends on besides its width, whether one can be
    made): a norm layer is rebuilt at any width; a module without parameters or buffers is copied."""
    name = type(module).__name__
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{name}(affine={module.affine}, track_running_stats={module.track_running_stats})", True
    if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
        return f"{name}({module.extra_repr()})", True
    return name, False


def affine(expr: ChannelExpr, columns: dict[int, int], full_widths: np.ndarray) -> AffineWidth:
    """``base - sum(m * (full_g - w_g))`` over the searchable groups as ``offset + sum(m * w_g)``."""
    terms = tuple((columns[g], m) for g, m in expr.per_group if g in columns)
    offset = expr.base - sum(m * int(full_widths[column]) for column, m in terms)
    return AffineWidth(int(offset), terms)


def collect_layers(
    analysis: Analysis, columns: dict[int, int], full_widths: np.ndarray
) -> tuple[tuple[ComputeLayer, ...], tuple[ElementwiseCall, ...]]:
    """The compute layers and element-wise calls of one traced forward pass, in call order."""
    model = analysis.model

    def side(name: str, which: str, default: int) -> AffineWidth:
        expr = analysis.module_sides.get((name, which), ChannelExpr(int(default)))
        return affine(expr, columns, full_widths)

    compute: list[ComputeLayer] = []
    elementwise: list[ElementwiseCall] = []
    for call in analysis.calls:
        module = model.get_submodule(call.module)
        if call.in_shape is None or call.out_shape is None:
            continue
        in_shape = (1, *call.in_shape[1:])
        if isinstance(module, nn.Conv2d):
            cin, cout = (
                side(call.module, "in", module.in_channels),
                side(call.module, "out", module.out_channels),
            )
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            kind = DENSE if module.groups == 1 else DEPTHWISE if depthwise else FIXED
            compute.append(
                ComputeLayer(
                    call.module,
                    kind,
                    in_shape,
                    cin,
                    cin if kind == DEPTHWISE else cout,
                    tuple(module.kernel_size),
                    tuple(module.stride),
                    module.padding if isinstance(module.padding, str) else tuple(module.padding),
                    tuple(module.dilation),
                    module.groups if kind == FIXED else 1,
                    module.bias is not None,
                )
            )
        elif isinstance(module, nn.Linear):
            cin, cout = (
                side(call.module, "in", module.in_features),
                side(call.module, "out", module.out_features),
            )
            compute.append(
                ComputeLayer(call.module, LINEAR, in_shape, cin, cout, bias=module.bias is not None)
            )
        elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
            # over the channels alone, in any layout (a channels-last tensor's dim 1 is not its channels)
            channels = module.normalized_shape[0]
            elementwise.append(
                ElementwiseCall(
                    call.module,
                    math.prod(call.out_shape[1:]) // channels,
                    side(call.module, "out", channels),
                    in_shape,
                    *standalone_signature(module),
                )
            )
        elif op_counter.MODULES_MAPPING.get(type(module)) is not None and len(call.out_shape) > 1:
            channels = call.out_shape[1]
            if call.out_channels.base == call.out_shape[-1]:
                channels = call.out_shape[-1]  # channels-last (see acp.core.graph._tensor_channels)
            per_channel = math.prod(call.out_shape[1:]) // max(channels, 1)
            expr = call.out_channels if call.out_channels.base == channels else ChannelExpr(channels)
            signature, timeable = standalone_signature(module)
            elementwise.append(
                ElementwiseCall(
                    call.module,
                    per_channel,
                    affine(expr, columns, full_widths),
                    in_shape,
                    signature,
                    timeable and len(call.in_shape) > 1 and call.in_shape[1] == channels,
                )
            )
    return tuple(compute), tuple(elementwise)
