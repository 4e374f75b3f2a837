"""Exact analytic MACs/params: Torch-Pruning's op counter, rewritten as a polynomial in the group widths.

``tp.utils.count_ops_and_params`` sums, per forward call of each module it knows, a count that depends on
the call's tensor shapes (convs: kernel x in x out/groups per output position, plus bias; linear: input
elements x out, plus bias; BN: input elements, x2 when affine; activations: output elements; pools: input
elements; ...). Every width involved is a linear function of the group widths (see
:class:`acp.core.graph.ChannelExpr`), so each count is a constant times at most two such widths. Summing the
terms gives ``const + linear @ w + w @ quadratic @ w`` with integer coefficients: the cost of a whole swarm
is two integer matrix products, and equals the counter's result on the materialized model exactly.

Modules the counter counts but acp does not model (RNNs, attention, a LayerNorm over more than the
channels, ...) are taken from the counter's own per-layer figure, which is only valid while their widths
stay fixed; a group that would change them is reported as an error naming the layer. Subclasses of the
layers the counter counts (timm's ``Conv2dSame``, ``BatchNormAct2d``) are counted as their base class
(:func:`acp.core.graph.count_subclasses_as_their_base`), by the counter and by this model alike.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter

from acp.core.graph import Analysis, ChannelExpr, NormActHook, counted_modules, norm_activations
from acp.errors import UserError

_CONV_TYPES = (nn.modules.conv._ConvNd,)


@dataclass(frozen=True)
class Term:
    """``coefficient * prod(factor widths)`` contributed by ``module`` (0, 1 or 2 factors)."""

    module: str
    coefficient: int
    factors: tuple[ChannelExpr, ...] = ()

    def base_value(self) -> int:
        return self.coefficient * math.prod(factor.base for factor in self.factors)


@dataclass(frozen=True)
class Polynomial:
    """``const + linear @ w + sum((w @ quadratic) * w)`` over the searchable widths ``w`` (int64)."""

    const: int
    linear: np.ndarray
    quadratic: np.ndarray

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        """Values for a (P, G) int64 width matrix, as a (P,) int64 array."""
        return self.const + widths @ self.linear + np.einsum("pg,pg->p", widths @ self.quadratic, widths)


class CostModelError(UserError):
    """A searchable group would change a layer whose cost acp cannot express exactly."""

    def __init__(self, message: str, group_index: int):
        super().__init__(message)
        self.group_index = group_index


def restrict(expr: ChannelExpr, searchable: set[int]) -> ChannelExpr:
    """Drop the dependence on groups that never change (they stay at full width)."""
    return ChannelExpr(expr.base, tuple((g, m) for g, m in expr.per_group if g in searchable))


def collect_terms(analysis: Analysis, searchable: set[int]) -> tuple[list[Term], list[Term], list[str]]:
    """(MAC terms, parameter terms, modules whose MACs must come from the op counter's own figure)."""
    model = analysis.model
    group_ids = [group.id for group in analysis.groups]

    def side(name: str, which: str, default: int) -> ChannelExpr:
        return restrict(analysis.module_sides.get((name, which), ChannelExpr(int(default))), searchable)

    def require_fixed(name: str, module: nn.Module, exprs: Iterable[ChannelExpr]) -> None:
        for expr in exprs:
            if expr.varies:
                group = group_ids[expr.per_group[0][0]]
                raise CostModelError(
                    f"channel group {group!r} changes the width of {name} ({type(module).__name__}), "
                    f"whose cost acp cannot count exactly; add {name!r} or {group!r} to ignored_layers",
                    expr.per_group[0][0],
                )

    def elementwise(name: str, module: nn.Module, shape, channels: ChannelExpr, first: int = 1) -> Term:
        """One count per tensor element: elements per channel times the channel width. The channels are the
        tensor's dim ``first`` or, channels-last, its last dim; a width read from elsewhere, or one that
        cannot hold the channels of the groups it follows, is not counted as varying."""
        if not shape or len(shape) <= first or 0 in shape:
            return Term(name, math.prod(shape) if shape else 0)
        held = sum(m * analysis.groups[g].full_width for g, m in channels.per_group)
        if channels.base not in (shape[first], shape[-1]) or held > channels.base:
            require_fixed(name, module, (channels,))
            return Term(name, math.prod(shape))
        return Term(name, math.prod(shape) // channels.base, (channels,))

    macs: list[Term] = []
    from_counter: list[str] = []
    for call in analysis.calls:
        name = call.module
        module = model.get_submodule(name)
        hook = op_counter.MODULES_MAPPING.get(type(module))
        activations = 0  # a norm layer's own activations (BatchNormAct2d), one count per output element
        if isinstance(hook, NormActHook):
            hook, activations = hook.norm_hook, norm_activations(module)
        in_channels = restrict(call.in_channels, searchable)
        out_channels = restrict(call.out_channels, searchable)
        if hook is op_counter.conv_flops_counter_hook:
            macs += _conv_macs(name, module, call, side, require_fixed)
        elif hook is op_counter.linear_flops_counter_hook:
            cin = side(name, "in", module.in_features)
            cout = side(name, "out", module.out_features)
            positions = math.prod(call.in_shape) // module.in_features
            macs.append(Term(name, positions, (cin, cout)))
            if module.bias is not None:
                macs.append(Term(name, 1, (cout,)))
        elif hook is op_counter.bn_flops_counter_hook and isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = side(name, "out", module.num_features)
            per_channel = math.prod(call.in_shape) // module.num_features
            macs.append(Term(name, per_channel * (2 if module.affine else 1), (channels,)))
            if activations:
                per_output = math.prod(call.out_shape) // module.num_features
                macs.append(Term(name, per_output * activations, (channels,)))
        elif hook is op_counter.ln_flops_counter_hook and _channel_layer_norm(module):
            # over the channels alone, in any layout: its width is its module side, not the tensor's dim 1
            channels = side(name, "out", module.normalized_shape[0])
            per_channel = math.prod(call.in_shape) // module.normalized_shape[0]
            macs.append(Term(name, per_channel * (2 if module.elementwise_affine else 1), (channels,)))
            if activations:
                per_output = math.prod(call.out_shape) // module.normalized_shape[0]
                macs.append(Term(name, per_output * activations, (channels,)))
        elif hook is op_counter.relu_flops_counter_hook:
            macs.append(elementwise(name, module, call.out_shape, out_channels))
        elif hook is op_counter.pool_flops_counter_hook:
            macs.append(elementwise(name, module, call.in_shape, in_channels))
        elif hook is op_counter.upsample_flops_counter_hook:
            # the counter looks at output[0]: the first sample only
            macs.append(elementwise(name, module, call.out_shape[1:], out_channels, first=0))
        else:
            exprs = [in_channels, out_channels, side(name, "in", 0), side(name, "out", 0)]
            require_fixed(name, module, exprs)
            from_counter.append(name)
    params = _parameter_terms(model, side, require_fixed)
    return macs, params, list(dict.fromkeys(from_counter))


def _conv_macs(name, module, call, side, require_fixed) -> list[Term]:
    cin = side(name, "in", module.in_channels)
    cout = side(name, "out", module.out_channels)
    positions = call.out_shape[0] * math.prod(call.out_shape[2:])
    kernel = math.prod(module.kernel_size)
    terms = []
    if module.groups == 1:
        terms.append(Term(name, kernel * positions, (cin, cout)))
    elif _is_depthwise(module):  # in, out and groups shrink together; out // groups stays 1
        terms.append(Term(name, kernel * positions * (module.out_channels // module.groups), (cin,)))
    else:
        require_fixed(name, module, (cin, cout))
        per_position = module.in_channels * (module.out_channels // module.groups)
        terms.append(Term(name, kernel * positions * per_position))
    if module.bias is not None:
        terms.append(Term(name, positions, (cout,)))
    return terms


def _channel_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def _is_depthwise(module: nn.Module) -> bool:
    return module.groups == module.out_channels == module.in_channels and module.out_channels > 1


def _parameter_terms(model: nn.Module, side, require_fixed) -> list[Term]:
    terms: list[Term] = []
    for full_name, parameter in model.named_parameters():
        owner_name, _, attribute = full_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        numel = parameter.numel()
        if isinstance(owner, _CONV_TYPES) and attribute in ("weight", "bias"):
            cin = side(owner_name, "in", owner.in_channels)
            cout = side(owner_name, "out", owner.out_channels)
            if attribute == "bias":
                terms.append(Term(owner_name, 1, (cout,)))
            elif owner.groups == 1:
                terms.append(Term(owner_name, numel // (owner.in_channels * owner.out_channels), (cin, cout)))
            elif _is_depthwise(owner):
                terms.append(Term(owner_name, numel // owner.out_channels, (cout,)))
            else:
                require_fixed(owner_name, owner, (cin, cout))
                terms.append(Term(owner_name, numel))
        elif isinstance(owner, nn.Linear) and attribute in ("weight", "bias"):
            cin = side(owner_name, "in", owner.in_features)
            cout = side(owner_name, "out", owner.out_features)
            terms.append(Term(owner_name, 1, (cin, cout) if attribute == "weight" else (cout,)))
        elif isinstance(owner, nn.modules.batchnorm._BatchNorm) and attribute in ("weight", "bias"):
            terms.append(Term(owner_name, 1, (side(owner_name, "out", owner.num_features),)))
        elif isinstance(owner, nn.PReLU) and owner.num_parameters > 1:
            terms.append(Term(owner_name, 1, (side(owner_name, "out", owner.num_parameters),)))
        elif _channel_layer_norm(owner) and attribute in ("weight", "bias"):
            terms.append(Term(owner_name, 1, (side(owner_name, "out", owner.normalized_shape[0]),)))
        elif parameter.dim() >= 1 and numel == parameter.shape[0] and side(full_name, "out", numel).varies:
            # a per-channel parameter outside any layer (a layer scale), pruned as a channel group member
            terms.append(Term(full_name, 1, (side(full_name, "out", numel),)))
        else:
            require_fixed(owner_name, owner, (side(owner_name, "in", 0), side(owner_name, "out", 0)))
            terms.append(Term(owner_name, numel))
    return terms


def check_against_counter(
    analysis: Analysis,
    example_input: torch.Tensor,
    macs_terms: list[Term],
    params_terms: list[Term],
    from_counter: list[str],
) -> tuple[list[Term], int, int]:
    """Compare every counted module's full-width MACs with ``count_ops_and_params``; fill in the modules
    acp does not model from the counter. Returns (completed MAC terms, base MACs, base params)."""
    model = analysis.model
    counted_macs, counted_params, layer_macs, _ = tp.utils.count_ops_and_params(
        model, (example_input,), layer_wise=True
    )
    mine: dict[str, int] = defaultdict(int)
    for term in macs_terms:
        mine[term.module] += term.base_value()
    completed = list(macs_terms)
    for name, module in counted_modules(model).items():
        theirs = int(layer_macs.get(module) or 0)
        if name in from_counter:
            completed.append(Term(name, theirs))
        elif mine.get(name, 0) != theirs:
            raise RuntimeError(
                f"acp's cost model gives {mine.get(name, 0)} MACs for {name} ({type(module).__name__}) "
                f"but Torch-Pruning counts {theirs}; please report this model"
            )
    base_macs = sum(term.base_value() for term in completed)
    base_params = sum(term.base_value() for term in params_terms)
    if base_macs != int(counted_macs) or base_params != int(counted_params):
        raise RuntimeError(
            f"cost model totals ({base_macs} MACs, {base_params} params) differ from Torch-Pruning's "
            f"({int(counted_macs)}, {int(counted_params)}); please report this model"
        )
    return completed, base_macs, base_params


def assemble(terms: Iterable[Term], columns: dict[int, int], full_widths: np.ndarray) -> Polynomial:
    """Expand the terms into a polynomial over the searchable widths (``columns``: group index -> column).

    A width ``base - sum(m_g * (full_g - w_g))`` is ``offset + sum(m_g * w_g)`` with
    ``offset = base - sum(m_g * full_g)``; a product of two such widths splits into constant, linear and
    quadratic parts. Python integers throughout, so the int64 arrays are exact.
    """
    size = len(columns)
    const = 0
    linear = [0] * size
    quadratic: dict[tuple[int, int], int] = defaultdict(int)

    def split(expr: ChannelExpr) -> tuple[int, list[tuple[int, int]]]:
        pairs = [(columns[g], m) for g, m in expr.per_group]
        return expr.base - sum(m * int(full_widths[col]) for col, m in pairs), pairs

    for term in terms:
        c = term.coefficient
        if not term.factors:
            const += c
        elif len(term.factors) == 1:
            offset, pairs = split(term.factors[0])
            const += c * offset
            for col, m in pairs:
                linear[col] += c * m
        else:
            (offset_a, pairs_a), (offset_b, pairs_b) = split(term.factors[0]), split(term.factors[1])
            const += c * offset_a * offset_b
            for col, m in pairs_a:
                linear[col] += c * m * offset_b
            for col, m in pairs_b:
                linear[col] += c * m * offset_a
            for col_a, m_a in pairs_a:
                for col_b, m_b in pairs_b:
                    quadratic[(col_a, col_b)] += c * m_a * m_b
    limit = 2**62
    if abs(const) >= limit or any(abs(v) >= limit for v in (*linear, *quadratic.values())):
        raise RuntimeError("cost model coefficients exceed int64")
    matrix = np.zeros((size, size), dtype=np.int64)
    for (row, col), value in quadratic.items():
        matrix[row, col] = value
    return Polynomial(int(const), np.asarray(linear, dtype=np.int64), matrix)
