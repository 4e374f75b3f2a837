"""Torch-Pruning's DependencyGraph, read once and turned into plain data.

Everything Torch-Pruning-specific lives here, so the rest of acp never sees its quirks: indices passed to
``get_pruning_group`` are the ones to *remove*; ``build_dependency`` needs autograd and puts the model in
eval mode; a graph cannot be deep-copied with its model. :func:`analyze` works on a private copy of the
model and returns only names, integers and numpy arrays:

- the channel groups (root = the first Conv2d/Linear in definition order whose output channels the group
  holds), each with its *members*: the parameterised layers it touches and, for every touched index, the
  root channel it comes from (an "index plan" that slices a model without building a graph again);
- for every tensor that the op counter looks at, its width as a linear function of the group widths
  (:class:`ChannelExpr`), derived from how many indices each group removes at each graph node;
- one record per forward call of every module that ``count_ops_and_params`` counts.
"""

from __future__ import annotations

import copy
import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import Node
from torch_pruning.pruner import function as tp_function
from torch_pruning.utils import op_counter

from acp.errors import UserError

# How a group touches a layer: which tensors along which dims, which attributes shrink.
CONV_OUT, CONV_IN, DEPTHWISE = "conv_out", "conv_in", "depthwise"
LINEAR_OUT, LINEAR_IN = "linear_out", "linear_in"
BATCHNORM, PRELU = "batchnorm", "prelu"
PRUNABLE_KINDS = (CONV_OUT, CONV_IN, DEPTHWISE, LINEAR_OUT, LINEAR_IN, BATCHNORM, PRELU)
ROOT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ChannelExpr:
    """A tensor width: ``base - sum(per_group[g] * removed_g)``, where ``removed_g = full_g - w_g``."""

    base: int
    per_group: tuple[tuple[int, int], ...] = ()  # (group index, channels per removed group channel)

    @property
    def varies(self) -> bool:
        return bool(self.per_group)


@dataclass(frozen=True)
class Member:
    """A layer a group prunes: its ``kind`` dimension index ``indices[i]`` is group channel ``roots[i]``."""

    module: str
    kind: str
    indices: np.ndarray
    roots: np.ndarray


@dataclass(frozen=True)
class RawGroup:
    id: str
    full_width: int
    members: tuple[Member, ...]
    blocked_by: str | None  # an ignored layer whose outputs this group would change, else None
    unsupported: str | None  # why acp cannot prune this group (a layer type it cannot slice), else None


@dataclass(frozen=True)
class Call:
    """One forward call of a module the op counter counts, with the widths of the tensors it sees."""

    module: str
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    in_channels: ChannelExpr  # width of the first input tensor (dim 1)
    out_channels: ChannelExpr  # width of the output tensor (dim 1)


@dataclass
class Analysis:
    model: nn.Module  # the private traced copy (eval mode); module attributes are read from it
    groups: list[RawGroup]
    calls: list[Call]
    # width of each module's in/out side ("in"/"out"), for layers in the graph
    module_sides: dict[tuple[str, str], ChannelExpr] = field(default_factory=dict)
    classifiers: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def counted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose forward calls ``count_ops_and_params`` counts (exact type match, outermost only)."""
    supported = set(op_counter.MODULES_MAPPING) | set(op_counter.CUSTOM_MODULES_MAPPING)
    result: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if type(module) in supported:
            result[prefix] = module
            return  # the counter does not descend into a counted module
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return result


def resolve_ignored(model: nn.Module, patterns: Sequence[str]) -> tuple[str, ...]:
    """Module names matched by names or fnmatch globs (and everything inside them); UserError if one matches
    nothing."""
    names = [name for name, _ in model.named_modules() if name]
    matched: list[str] = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise UserError(f"ignored_layers[{index}]: expected a module name or glob, got {pattern!r}")
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise UserError(f"ignored_layers[{index}]: {pattern!r} matches no module of the model")
        for hit in hits:
            matched += [name for name in names if name == hit or name.startswith(hit + ".")]
    return tuple(dict.fromkeys(matched))


class _Recorder:
    """Forward hooks that remember, per counted call, the shapes and autograd nodes of its tensors.

    They run inside Torch-Pruning's own tracing forward, so the recorded ``grad_fn`` objects are exactly
    the ones its graph nodes were made from.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.records: list[tuple[str, object, object, tuple | None, tuple | None]] = []
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def record(module, inputs, output):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            out = output if isinstance(output, torch.Tensor) else None
            self.records.append(
                (
                    name,
                    None if first is None else first.grad_fn,
                    None if out is None else out.grad_fn,
                    None if first is None else tuple(first.shape),
                    None if out is None else tuple(out.shape),
                )
            )

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def trace(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, tp.DependencyGraph, list]:
    """A private copy of ``model`` with its dependency graph and the recorded counted calls."""
    work = copy.deepcopy(model)
    for parameter in work.parameters():
        parameter.requires_grad_(True)  # tracing follows grad_fn; frozen weights would hide layers
    recorder = _Recorder(counted_modules(work))
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(work, (example_input,), verbose=False)
    finally:
        recorder.remove()
    return work, graph, recorder.records


def analyze(model: nn.Module, example_input: torch.Tensor, ignored_patterns: Sequence[str] = ()) -> Analysis:
    work, graph, records = trace(model, example_input)
    module_names = {module: name for name, module in work.named_modules()}
    order = {name: position for position, name in enumerate(module_names.values())}
    ignored = resolve_ignored(work, ignored_patterns)
    classifiers = _output_layers(graph, module_names)
    blocked = {name: name for name in ignored}
    for name in classifiers:
        blocked.setdefault(name, name)

    groups: list[RawGroup] = []
    side_per_group: dict[tuple[int, str], dict[int, int]] = {}  # (id(node), side) -> {group: per channel}
    visited: set[nn.Module] = set()
    for name, module in work.named_modules():
        if not isinstance(module, ROOT_TYPES) or module not in graph.module2node or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        full_width = int(pruner.get_out_channels(module))
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(full_width)))
        group_index = len(groups)
        members, blocked_by, unsupported = [], None, None
        for item in group:
            node, handler = item.dep.target, item.dep.handler
            sides = _sides(graph, node, handler)
            target = node.module
            target_name = module_names.get(target) if isinstance(target, nn.Module) else None
            if "out" in sides and isinstance(target, nn.Module):
                visited.add(target)
                if target_name in blocked and blocked_by is None:
                    blocked_by = target_name
            indices = np.asarray(item.idxs, dtype=np.int64)
            roots = np.asarray(item.root_idxs, dtype=np.int64)
            per_channel = _uniform_count(roots, full_width)
            label = target_name or type(target).__name__
            if per_channel is None and unsupported is None:
                unsupported = f"its channels reach {label} unevenly"
            for side in sides:
                side_per_group.setdefault((id(node), side), {})[group_index] = per_channel or 0
            kind, problem = _member_kind(node.module, label, sides)
            if problem and unsupported is None:
                unsupported = problem
            if kind is not None:
                members.append(Member(target_name, kind, indices, roots))
        members.sort(key=lambda member: order[member.module])
        groups.append(RawGroup(name, full_width, tuple(members), blocked_by, unsupported))

    def expr(node: Node | None, side: str, base: int) -> ChannelExpr:
        mults = side_per_group.get((id(node), side), {}) if node is not None else {}
        return ChannelExpr(int(base), tuple(sorted((g, m) for g, m in mults.items() if m)))

    node_of_grad_fn = {node.grad_fn: node for node in graph.module2node.values() if node.grad_fn is not None}
    calls = []
    for name, in_grad_fn, out_grad_fn, in_shape, out_shape in records:
        in_node = node_of_grad_fn.get(in_grad_fn) if in_grad_fn is not None else None
        out_node = node_of_grad_fn.get(out_grad_fn) if out_grad_fn is not None else None
        in_base = in_shape[1] if in_shape and len(in_shape) > 1 else 0
        out_base = out_shape[1] if out_shape and len(out_shape) > 1 else 0
        in_expr, out_expr = expr(in_node, "out", in_base), expr(out_node, "out", out_base)
        calls.append(Call(name, in_shape, out_shape, in_expr, out_expr))

    module_sides: dict[tuple[str, str], ChannelExpr] = {}
    for module, node in graph.module2node.items():
        name = module_names.get(module) if isinstance(module, nn.Module) else None
        if name is None:
            continue
        pruner = graph.get_pruner_of_module(module)
        for side in ("in", "out"):
            base = pruner.get_in_channels(module) if side == "in" else pruner.get_out_channels(module)
            if base is not None:
                module_sides[(name, side)] = expr(node, side, base)
    return Analysis(work, groups, calls, module_sides, classifiers, ignored)


def _sides(graph: tp.DependencyGraph, node: Node, handler) -> tuple[str, ...]:
    """Which side of ``node`` a pruning function acts on; layers like BN have one function for both."""
    pruner = graph.get_pruner_of_module(node.module)
    sides = tuple(
        side
        for side, function in (("in", pruner.prune_in_channels), ("out", pruner.prune_out_channels))
        if handler == function
    )
    if not sides:  # Torch-Pruning swaps in its module-level depthwise function for depthwise roots
        sides = ("in", "out") if handler == tp_function.prune_depthwise_conv_out_channels else ()
    if not sides:
        raise RuntimeError(f"cannot tell which side of {node.name} {handler} prunes")
    return sides


def _uniform_count(roots: np.ndarray, full_width: int) -> int | None:
    """How many indices each group channel maps to here, if every channel maps to the same number."""
    counts = np.bincount(roots, minlength=full_width)
    return int(counts[0]) if counts.size and np.all(counts == counts[0]) else None


def _member_kind(module, label: str, sides: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(kind, None) for a layer acp slices, (None, None) for a parameter-free op, (None, reason) otherwise."""
    both = len(sides) == 2
    if isinstance(module, nn.Conv2d):
        if module.groups == module.out_channels and module.out_channels > 1:
            if module.in_channels != module.groups:
                return None, f"depthwise conv {label} has a channel multiplier"
            return DEPTHWISE, None
        if module.groups != 1:
            return None, f"grouped conv {label} is not supported"
        return (CONV_OUT if "out" in sides else CONV_IN), None
    if isinstance(module, nn.Linear):
        return (LINEAR_OUT if "out" in sides else LINEAR_IN), None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and both:
        return BATCHNORM, None
    if isinstance(module, nn.PReLU) and both:
        return (PRELU if module.num_parameters > 1 else None), None
    holds_tensors = isinstance(module, nn.Module) and any(
        True for _ in (*module.parameters(recurse=False), *module.buffers(recurse=False))
    )
    if isinstance(module, nn.Module) and not holds_tensors:
        return None, None  # Torch-Pruning's placeholder ops (add, cat, flatten, ...) hold no tensors
    return None, f"{label} ({type(module).__name__}) cannot be sliced by acp"


def _output_layers(graph: tp.DependencyGraph, module_names: dict) -> tuple[str, ...]:
    """Conv2d/Linear layers whose outputs reach the model output through channel-preserving ops only."""
    found: list[str] = []
    # Torch-Pruning only adds an _OutputOp when the output is not a module's; either way the output
    # nodes are the ones nothing reads from.
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, (nn.modules.conv._ConvNd, nn.Linear)):
            found.append(module_names[node.module])
            continue
        stack.extend(node.inputs)
    return tuple(sorted(set(found)))


# --- applying an index plan ------------------------------------------------------------------------


def pruned_copy(model: nn.Module, removals: dict[tuple[str, str], np.ndarray]) -> nn.Module:
    """A copy of ``model`` with ``removals`` applied; shares no tensor with ``model``.

    The module tree is deep-copied with every tensor shared, sliced tensors are fresh from index_select,
    and only the untouched ones are cloned: each tensor is copied once instead of cloned, then sliced.
    """
    originals = {id(t): t for t in (*model.parameters(), *model.buffers())}
    pruned = _copy_tree(model, dict(originals))
    with torch.no_grad():
        apply_removals(pruned, removals)
        fresh: dict[int, torch.Tensor] = {}  # preserves weight tying
        for module in pruned.modules():
            for name, tensor in module._parameters.items():
                if tensor is not None and id(tensor) in originals:
                    if id(tensor) not in fresh:
                        fresh[id(tensor)] = nn.Parameter(tensor.detach().clone(), tensor.requires_grad)
                    module._parameters[name] = fresh[id(tensor)]
            for name, tensor in module._buffers.items():
                if tensor is not None and id(tensor) in originals:
                    fresh.setdefault(id(tensor), tensor.clone())
                    module._buffers[name] = fresh[id(tensor)]
    return pruned


def _copy_tree(module: nn.Module, memo: dict) -> nn.Module:
    """``copy.deepcopy`` for a module tree, minus the cost of deep-copying every module's bookkeeping dicts.

    Tensors in ``memo`` are shared (the caller replaces them); the ``_parameters``/``_buffers``/hook dicts
    are copied one level deep; any other attribute is deep-copied with the same memo, so shared
    submodules and tensors stay shared in the copy as they were in the original.
    """
    if id(module) in memo:
        return memo[id(module)]
    new = module.__class__.__new__(module.__class__)
    memo[id(module)] = new
    state = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = {
                name: None if child is None else _copy_tree(child, memo) for name, child in value.items()
            }
        elif key.startswith("_") and type(value) in (dict, OrderedDict):
            state[key] = type(value)(value)
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


def _keep_tensor(tensor: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    return torch.index_select(tensor, dim, keep).contiguous()


def _replace_parameter(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    old = getattr(module, name)
    if old is None:
        return
    new = nn.Parameter(_keep_tensor(old.data, dim, keep.to(old.device)), requires_grad=old.requires_grad)
    setattr(module, name, new)


def _replace_buffer(module: nn.Module, name: str, keep: torch.Tensor) -> None:
    old = getattr(module, name, None)
    if old is not None:
        setattr(module, name, _keep_tensor(old, 0, keep.to(old.device)))


def apply_removals(model: nn.Module, removals: dict[tuple[str, str], np.ndarray]) -> None:
    """Slice ``model`` in place: for each (module name, kind), drop the given indices of that dimension."""
    for (name, kind), remove in removals.items():
        module = model.get_submodule(name)
        size = _dimension_size(module, kind)
        keep_mask = np.ones(size, dtype=bool)
        keep_mask[remove] = False
        keep = torch.from_numpy(np.flatnonzero(keep_mask))
        removed = int(size - keep.numel())
        if removed == 0:
            continue
        if kind in (CONV_OUT, CONV_IN):
            out_dim = 1 if module.transposed else 0
            weight_dim = out_dim if kind == CONV_OUT else 1 - out_dim
            _replace_parameter(module, "weight", weight_dim, keep)
            if kind == CONV_OUT:
                _replace_parameter(module, "bias", 0, keep)
                module.out_channels -= removed
            else:
                module.in_channels -= removed
        elif kind == DEPTHWISE:
            _replace_parameter(module, "weight", 0, keep)
            _replace_parameter(module, "bias", 0, keep)
            module.out_channels -= removed
            module.in_channels -= removed
            module.groups -= removed
        elif kind in (LINEAR_OUT, LINEAR_IN):
            _replace_parameter(module, "weight", 0 if kind == LINEAR_OUT else 1, keep)
            if kind == LINEAR_OUT:
                _replace_parameter(module, "bias", 0, keep)
                module.out_features -= removed
            else:
                module.in_features -= removed
        elif kind == BATCHNORM:
            module.num_features -= removed
            _replace_buffer(module, "running_mean", keep)
            _replace_buffer(module, "running_var", keep)
            if module.affine:
                _replace_parameter(module, "weight", 0, keep)
                _replace_parameter(module, "bias", 0, keep)
        elif kind == PRELU:
            if module.num_parameters > 1:
                _replace_parameter(module, "weight", 0, keep)
                module.num_parameters -= removed
        else:  # pragma: no cover - kinds are produced by _member_kind only
            raise RuntimeError(f"unknown member kind {kind!r}")


def _dimension_size(module: nn.Module, kind: str) -> int:
    if kind in (CONV_OUT, DEPTHWISE):
        return module.out_channels
    if kind == CONV_IN:
        return module.in_channels
    if kind == LINEAR_OUT:
        return module.out_features
    if kind == LINEAR_IN:
        return module.in_features
    if kind == BATCHNORM:
        return module.num_features
    return module.num_parameters
