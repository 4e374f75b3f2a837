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

Operations whose channel indices Torch-Pruning cannot follow (a channel shuffle, or an index mapping that
raises) are made opaque (see :class:`_Graph`): the groups through them are kept at full width. Any other
failure of Torch-Pruning or of this reading is a UserError naming the model, the layer or operation and the
original error.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import logging
import re
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import Node
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency import shape_infer as tp_shape_infer
from torch_pruning.pruner import function as tp_function
from torch_pruning.utils import op_counter

from acp.errors import UserError

log = logging.getLogger(__name__)

# How a group touches a layer: which tensors along which dims, which attributes shrink.
CONV_OUT, CONV_IN, DEPTHWISE = "conv_out", "conv_in", "depthwise"
LINEAR_OUT, LINEAR_IN = "linear_out", "linear_in"
BATCHNORM, PRELU = "batchnorm", "prelu"
LAYERNORM = "layernorm"  # a LayerNorm over the channels alone (normalized_shape == (C,)), any layout
PARAMETER = "parameter"  # a per-channel parameter outside any layer (a layer scale, (C,) or (C, 1, 1)),
# sliced along dim 0: ``Member.module`` is the parameter's name
PRUNABLE_KINDS = (CONV_OUT, CONV_IN, DEPTHWISE, LINEAR_OUT, LINEAR_IN, BATCHNORM, PRELU, LAYERNORM, PARAMETER)
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
    passes_through: str | None = None  # an operation whose channels Torch-Pruning cannot follow (logged)


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


_NORM_HOOKS = (op_counter.bn_flops_counter_hook, op_counter.ln_flops_counter_hook)


class NormActHook:
    """The counter's hook for a norm layer followed by its own activation children (``BatchNormAct2d``)."""

    def __init__(self, norm_hook):
        self.norm_hook = norm_hook

    def __call__(self, module, inputs, output):
        self.norm_hook(module, inputs, output)
        module.__flops__ += int(output.numel()) * (norm_activations(module) or 0)


def norm_activations(module: nn.Module) -> int | None:
    """How many children of a norm layer the counter counts as activations (one per output element each),
    or None unless every child is either such an activation or a module the counter does not count,
    neither holding parameters (``Identity``, ``Dropout``, ``SiLU``, ...)."""
    count = 0
    for child in module.children():
        if any(True for _ in child.parameters()):
            return None
        hooks = [op_counter.MODULES_MAPPING.get(type(inner)) for inner in child.modules()]
        if hooks == [op_counter.relu_flops_counter_hook]:
            count += 1
        elif any(hook is not None for hook in hooks):
            return None
    return count


def count_subclasses_as_their_base(model: nn.Module) -> None:
    """Make ``count_ops_and_params`` count ``model``'s subclasses of the layers it counts.

    The counter matches module types exactly, so a subclass of Conv2d (timm's ``Conv2dSame``,
    ``StdConv2d``, ``ScaledStdConv2d``), of Linear, of a norm or an activation would silently count as zero
    MACs. Such a subclass is registered in the counter's table (for the whole process):

    - without children, with the hook of its nearest counted base class: it costs what the layer it
      extends costs;
    - a norm with children (timm's ``BatchNormAct2d``: the norm, then its ``drop`` and ``act``) with
      :class:`NormActHook`: the norm as the counter counts it, plus its activations as the counter counts
      them (see :func:`norm_activations`). Other subclasses with children are left alone: counting them
      would stop the counter from counting their children.
    """
    mapping = op_counter.MODULES_MAPPING
    for module in model.modules():
        kind = type(module)
        if kind in mapping:
            continue
        base = next((parent for parent in kind.__mro__[1:] if parent in mapping), None)
        if base is None:
            continue
        if next(module.children(), None) is None:
            log.debug("counting %s as %s", kind.__name__, base.__name__)
            mapping[kind] = mapping[base]
        elif mapping[base] in _NORM_HOOKS and norm_activations(module) is not None:
            log.debug("counting %s as %s and its activations", kind.__name__, base.__name__)
            mapping[kind] = NormActHook(mapping[base])


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


# --- building the graph: the operations Torch-Pruning cannot follow ---------------------------------

# Torch-Pruning's per-node index mappings: what its update_index_mapping runs for each node type.
_INDEX_MAPPINGS = {
    tp_ops.OPTYPE.CONCAT: "update_concat_index_mapping",
    tp_ops.OPTYPE.SPLIT: "update_split_index_mapping",
    tp_ops.OPTYPE.RESHAPE: "update_reshape_index_mapping",
    tp_ops.OPTYPE.UNBIND: "update_unbind_index_mapping",
    tp_ops.OPTYPE.EXPAND: "update_expand_index_mapping",
    tp_ops.OPTYPE.SLICE: "update_slice_index_mapping",
}


class _Graph(tp.DependencyGraph):
    """Torch-Pruning's graph, corrected where it misreads this torch version, and aware of the operations
    it cannot follow channels through.

    ``opaque`` maps such a node to a description of its operation: a channel shuffle (a view that splits
    the channels into groups, a transpose of the two group dims, a view back; Torch-Pruning takes the
    transpose for an element-wise op), or any node whose index mapping raises. Opaque nodes are made
    index-preserving for Torch-Pruning, and every channel group that reaches one is kept at full width,
    so the index plan through them is never used.

    ``torch.chunk``/``split`` sizes: Torch-Pruning looks for ``_saved_self_sizes``, which torch 2 renamed
    ``_saved_self_sym_sizes``, and then falls back to guessing the sizes from the graph (wrongly, for
    ShuffleNet's ``chunk``); they are read from the saved attributes instead.
    """

    def __init__(self):
        super().__init__()
        self.opaque: dict[Node, str] = {}
        self.shuffles: list[str] = []  # where each channel shuffle is, for the log
        self.unfollowed: list[str] = []  # the other opaque operations and their errors, for the log

    def build_dependency(self, *args, **kwargs):
        super().build_dependency(*args, **kwargs)
        self._read_split_sizes()  # Torch-Pruning guessed them again after _build_dependency
        return self

    def _build_dependency(self, module2node):
        # The last step before Torch-Pruning computes the index mappings (and it recomputes them for every
        # group), so opaque nodes are taken out of that computation here.
        super()._build_dependency(module2node)
        tp_shape_infer.init_shape_information(self)
        self._read_split_sizes()
        names = self._module2name
        for node in list(module2node.values()):
            chain = None if node in self.opaque else _channel_shuffle(node)
            if chain:
                where = _nearest_layers(node, names)
                what = "the channel shuffle" + (f" after {', '.join(where)}" if where else "")
                self.shuffles.append(what)
                for member in chain:
                    self._make_opaque(member, f"{what} (acp keeps shuffled channels at full width)")
        for node in list(module2node.values()):
            update = _INDEX_MAPPINGS.get(node.type)
            if update is None or node in self.opaque:
                continue
            try:
                getattr(tp_index_mapping, update)(self, node)
            except Exception as error:
                what = (
                    f"{_describe_node(node, names)}, which Torch-Pruning cannot follow ({_error_text(error)})"
                )
                self.unfollowed.append(what)
                self._make_opaque(node, what)

    def _make_opaque(self, node: Node, reason: str) -> None:
        self.opaque[node] = reason
        if node.type in _INDEX_MAPPINGS:
            node.type = tp_ops.OPTYPE.ELEMENTWISE  # Torch-Pruning maps no indices through element-wise ops
        edges = [*node.dependencies]
        edges += [
            dep for other in (*node.inputs, *node.outputs) for dep in other.dependencies if dep.target is node
        ]
        for dep in edges:  # a mapping that failed half-way may have written some of them
            dep.index_mapping = [None, None]

    def _read_split_sizes(self) -> None:
        for node in self.module2node.values():
            grad_fn, sizes = node.grad_fn, _saved_sizes(node.grad_fn)
            dim = getattr(grad_fn, "_saved_dim", None)
            if node.type != tp_ops.OPTYPE.SPLIT or sizes is None or dim is None or int(dim) % len(sizes) != 1:
                continue
            pieces = getattr(grad_fn, "_saved_split_sizes", None)
            if pieces is None and getattr(grad_fn, "_saved_split_size", None):
                size = int(grad_fn._saved_split_size)
                count = -(-sizes[1] // size)
                pieces = [size] * (count - 1) + [sizes[1] - size * (count - 1)]
            if pieces is None or len(pieces) != len(node.outputs):
                continue  # a piece nobody reads: Torch-Pruning's outputs no longer line up with the pieces
            node.module.split_sizes = [int(piece) for piece in pieces]
            node.module.offsets = [0, *np.cumsum(node.module.split_sizes).tolist()]


def _saved_sizes(grad_fn) -> tuple[int, ...] | None:
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None) or getattr(grad_fn, "_saved_self_sizes", None)
    return tuple(int(size) for size in sizes) if sizes else None


def _swaps_dims_1_and_2(grad_fn, rank: int) -> bool:
    name = grad_fn.name() if grad_fn is not None else ""
    if name.startswith("TransposeBackward"):
        dims = {int(grad_fn._saved_dim0) % rank, int(grad_fn._saved_dim1) % rank}
        return dims == {1, 2}
    if name.startswith("PermuteBackward"):
        dims = tuple(int(dim) % rank for dim in grad_fn._saved_dims)
        return dims == (0, 2, 1, *range(3, rank))
    return False


def _channel_shuffle(node: Node) -> list[Node] | None:
    """The nodes view -> transpose/permute -> (contiguous) -> view/flatten of a channel shuffle starting
    at ``node``, else None. Recognised by the saved input shapes: (N, C, ...) before, then
    (N, C/g, g, ...) after the two group dims were swapped."""
    before = _saved_sizes(node.grad_fn)
    if node.type != tp_ops.OPTYPE.RESHAPE or before is None or len(before) < 3 or len(node.outputs) != 1:
        return None
    swap = node.outputs[0]
    if not _swaps_dims_1_and_2(swap.grad_fn, len(before) + 1) or len(swap.outputs) != 1:
        return None
    chain, following = [node, swap], swap.outputs[0]
    while following.grad_fn is not None and following.grad_fn.name().startswith("CloneBackward"):
        if len(following.outputs) != 1:
            return None
        chain.append(following)
        following = following.outputs[0]
    after = _saved_sizes(following.grad_fn)
    if following.type != tp_ops.OPTYPE.RESHAPE or after is None or len(after) != len(before) + 1:
        return None
    channels, spatial = before[1], before[2:]
    if after[0] != before[0] or after[1] * after[2] != channels or after[3:] != spatial or after[2] == 1:
        return None
    return [*chain, following]


def _describe_node(node: Node, module_names: dict) -> str:
    """A layer's name, or the operation and the layers right before it (for messages)."""
    module = node.module
    name = module_names.get(module) if isinstance(module, nn.Module) else None
    if name:
        return f"{name} ({type(module).__name__})"
    if node.grad_fn is not None:
        operation = re.sub(r"Backward\d*$", "", node.grad_fn.name()).lower()
    else:
        operation = type(module).__name__
    where = _nearest_layers(node, module_names)
    return f"the {operation} op" + (f" after {', '.join(where)}" if where else "")


def _nearest_layers(node: Node, module_names: dict, limit: int = 200) -> list[str]:
    """The named layers closest upstream of ``node`` (all of those at the smallest distance)."""
    frontier, seen = list(node.inputs), {id(node)}
    while frontier and len(seen) < limit:
        found = sorted(
            {
                module_names[n.module]
                for n in frontier
                if isinstance(n.module, nn.Module) and n.module in module_names
            }
        )
        if found:
            return found
        seen.update(id(n) for n in frontier)
        frontier = [i for n in frontier for i in n.inputs if id(i) not in seen]
    return []


def _failing_node(error: BaseException) -> Node | None:
    """The graph node Torch-Pruning was working on when ``error`` was raised (innermost first)."""
    frames = list(traceback.walk_tb(error.__traceback__))
    for frame, _ in reversed(frames):
        if "torch_pruning" not in frame.f_code.co_filename:
            continue
        for value in frame.f_locals.values():
            if isinstance(value, Node):
                return value
    return None


def _error_text(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def trace(
    model: nn.Module, example_input: torch.Tensor, model_name: str | None = None
) -> tuple[nn.Module, _Graph, list]:
    """A private copy of ``model`` with its dependency graph and the recorded counted calls.

    A failure of the model's forward pass or inside Torch-Pruning is a UserError naming the model (its
    class unless ``model_name`` is given), the operation and the original error.
    """
    work = copy.deepcopy(model).eval()  # as Torch-Pruning's tracing leaves it
    count_subclasses_as_their_base(work)
    for parameter in work.parameters():
        parameter.requires_grad_(True)  # tracing follows grad_fn; frozen weights would hide layers
    model_name = model_name or type(model).__name__
    try:  # Torch-Pruning retries a failed forward pass with other arguments, hiding the first error
        with torch.no_grad():
            work(example_input)
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"cannot analyse the channels of {model_name}: its forward pass on an input of shape "
            f"{list(example_input.shape)} fails: {_error_text(error)}"
        ) from error
    recorder = _Recorder(counted_modules(work))
    graph = _Graph()
    try:
        with torch.enable_grad():
            graph.build_dependency(work, (example_input,), verbose=False)
    except UserError:
        raise
    except Exception as error:
        names = {module: name for name, module in work.named_modules()}
        node = _failing_node(error)
        where = f" at {_describe_node(node, names)}" if node is not None else ""
        raise UserError(
            f"cannot analyse the channels of {model_name}: Torch-Pruning's tracing on an input of shape "
            f"{list(example_input.shape)} failed{where}: {_error_text(error)}"
        ) from error
    finally:
        recorder.remove()
    if graph.shuffles:
        log.warning(
            "%d channel shuffle(s) (e.g. %s): the channel groups through them are kept at full width",
            len(graph.shuffles),
            graph.shuffles[-1],  # Torch-Pruning lists nodes from the output backwards
        )
    for what in graph.unfollowed:
        log.warning("channel groups through %s are kept at full width", what)
    return work, graph, recorder.records


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    ignored_patterns: Sequence[str] = (),
    model_name: str | None = None,
) -> Analysis:
    """Read the channel groups, tensor widths and counted calls of ``model`` (see the module docstring).

    Anything Torch-Pruning (or acp's reading of its graph) cannot follow is a UserError naming the model
    (``model_name``, else its class), the layer or operation, and the original error; a group whose
    reading fails is kept at full width instead when its root layer is in ``ignored_patterns``.
    """
    model_name = model_name or type(model).__name__
    work, graph, records = trace(model, example_input, model_name)
    module_names = {module: name for name, module in work.named_modules()}
    order = {name: position for position, name in enumerate(module_names.values())}
    # parameters outside any layer (layer scales) take part in groups under their own names
    param_names = {param: name for name, param in work.named_parameters() if param in graph.module2node}
    for name in param_names.values():
        order[name] = order[name.rpartition(".")[0]] + 0.5  # right after the module that holds it
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
        try:
            raw, side_counts, outputs = _read_group(
                graph, module, name, full_width, module_names, param_names, blocked
            )
        except UserError:
            raise
        except Exception as error:
            node = _failing_node(error)
            where = f" at {_describe_node(node, module_names)}" if node is not None else ""
            failure = f"Torch-Pruning's group of {name} could not be read{where}: {_error_text(error)}"
            if name not in ignored:
                raise UserError(
                    f"cannot analyse the channels of {model_name}: {failure}; workaround: "
                    f'[space] ignored_layers = ["{name}"] in the search space keeps that group at full width'
                ) from error
            groups.append(RawGroup(name, full_width, (), None, failure))
            continue
        group_index = len(groups)
        visited.update(outputs)
        for key, per_channel in side_counts.items():
            side_per_group.setdefault(key, {})[group_index] = per_channel
        members = sorted(raw.members, key=lambda member: order[member.module])
        groups.append(dataclasses.replace(raw, members=tuple(members)))

    def expr(node: Node | None, side: str, base: int) -> ChannelExpr:
        mults = side_per_group.get((id(node), side), {}) if node is not None else {}
        return ChannelExpr(int(base), tuple(sorted((g, m) for g, m in mults.items() if m)))

    node_of_grad_fn = {node.grad_fn: node for node in graph.module2node.values() if node.grad_fn is not None}
    calls = []
    for name, in_grad_fn, out_grad_fn, in_shape, out_shape in records:
        in_node = node_of_grad_fn.get(in_grad_fn) if in_grad_fn is not None else None
        out_node = node_of_grad_fn.get(out_grad_fn) if out_grad_fn is not None else None
        in_expr = expr(in_node, "out", _tensor_channels(graph, in_node, in_shape))
        out_expr = expr(out_node, "out", _tensor_channels(graph, out_node, out_shape))
        calls.append(Call(name, in_shape, out_shape, in_expr, out_expr))

    module_sides: dict[tuple[str, str], ChannelExpr] = {}
    for module, node in graph.module2node.items():
        name = module_names.get(module) if isinstance(module, nn.Module) else param_names.get(module)
        if name is None:
            continue
        pruner = graph.get_pruner_of_module(module)
        for side in ("in", "out"):
            if isinstance(module, nn.Parameter):  # its width is along the node's pruning dim
                base = graph.get_out_channels(module)
            else:
                base = pruner.get_in_channels(module) if side == "in" else pruner.get_out_channels(module)
            if base is not None:
                module_sides[(name, side)] = expr(node, side, base)
    return Analysis(work, groups, calls, module_sides, classifiers, ignored)


def _tensor_channels(graph: _Graph, node: Node | None, shape: tuple[int, ...] | None) -> int:
    """How many channels a recorded tensor has, as Torch-Pruning counts them: its dim 1, or its last dim
    when it is channels-last (ConvNeXt's MLP runs between two permutes: Linear, GELU, Linear over the
    last dim), recognised by the channel count Torch-Pruning infers at ``node``."""
    base = shape[1] if shape and len(shape) > 1 else 0
    if node is None or len(shape or ()) < 3 or shape[-1] == base:
        return base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Maximum recursive depth reached!": then nothing is inferred
        inferred = tp_shape_infer.infer_out_channels_recursively(graph, node, [0])
    return int(inferred) if inferred == shape[-1] else base


def _read_group(
    graph: _Graph,
    root: nn.Module,
    root_name: str,
    full_width: int,
    module_names: dict,
    param_names: dict,
    blocked: dict,
) -> tuple[RawGroup, dict[tuple[int, str], int], list[nn.Module]]:
    """One group as plain data: (the group, channels per group channel at each (node, side), the modules
    whose outputs it holds)."""
    pruner = graph.get_pruner_of_module(root)
    group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(full_width)))
    members, outputs, side_counts = [], [], {}
    blocked_by = unsupported = None
    passes_through = None  # an operation whose channel indices Torch-Pruning cannot follow
    split = None  # a torch.split/chunk of the group's channels
    sliced = None  # a slice x[:, a:b] of part of the group's channels
    for item in group:
        node, handler = item.dep.target, item.dep.handler
        sides = _sides(graph, node, handler, module_names)
        target = node.module
        if isinstance(target, nn.Module):
            target_name = module_names.get(target)
        else:
            target_name = param_names.get(target) if isinstance(target, nn.Parameter) else None
        if node in graph.opaque and passes_through is None:
            passes_through = graph.opaque[node]
        if _splits_channels(node) and len(item.idxs) and split is None:
            split = _describe_node(node, module_names)
        if _slices_channels(node) and len(item.idxs) and sliced is None:
            sliced = _describe_node(node, module_names)
        if "out" in sides and isinstance(target, nn.Module):
            outputs.append(target)
            if target_name in blocked and blocked_by is None:
                blocked_by = target_name
        indices = np.asarray(item.idxs, dtype=np.int64)
        roots = np.asarray(item.root_idxs, dtype=np.int64)
        per_channel = _uniform_count(roots, full_width)
        label = target_name or type(target).__name__
        if per_channel is None and unsupported is None:
            unsupported = f"its channels reach {label} unevenly"
        for side in sides:
            side_counts[(id(node), side)] = per_channel or 0
        kind, problem = _member_kind(node.module, label, sides)
        if problem and unsupported is None:
            unsupported = problem
        if kind is not None:
            members.append(Member(target_name, kind, indices, roots))
    if passes_through is not None:
        unsupported = f"its channels pass through {passes_through}"
    elif split is not None:
        unsupported = f"its channels are split by {split} (torch.split/chunk), whose pieces acp cannot resize"
    elif sliced is not None:
        unsupported = f"part of its channels are taken by {sliced} (x[:, a:b]): acp cannot move its bounds"
    raw = RawGroup(root_name, full_width, tuple(members), blocked_by, unsupported, passes_through)
    return raw, side_counts, outputs


def _splits_channels(node: Node) -> bool:
    """Whether ``node`` is a torch.split/chunk along the channel dim (or a dim it cannot tell)."""
    if node.type != tp_ops.OPTYPE.SPLIT:
        return False
    dim, sizes = getattr(node.grad_fn, "_saved_dim", None), _saved_sizes(node.grad_fn)
    return dim is None or sizes is None or int(dim) % len(sizes) == 1


def _slices_channels(node: Node) -> bool:
    """Whether ``node`` takes part of the channels (``x[:, a:b]``), as opposed to all of them or a slice of
    another dim. The bounds are constants of the model's code: pruned, they would take other channels."""
    if node.type != tp_ops.OPTYPE.SLICE:
        return False
    grad_fn = node.grad_fn
    sizes = _saved_sizes(grad_fn)
    dim = getattr(grad_fn, "_saved_dim", None)
    if sizes is None or dim is None:
        return True
    dim = int(dim) % len(sizes)
    if (len(sizes) == 4 and dim != 1) or (len(sizes) == 3 and dim != 2):  # where Torch-Pruning maps none
        return False
    start, end = getattr(grad_fn, "_saved_start", None), getattr(grad_fn, "_saved_end", None)
    step = getattr(grad_fn, "_saved_step", 1)
    whole = start in (None, 0) and step in (None, 1) and (end is None or int(end) >= sizes[dim])
    return not whole


def _sides(graph: tp.DependencyGraph, node: Node, handler, module_names: dict) -> tuple[str, ...]:
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
        raise RuntimeError(f"cannot tell which side of {_describe_node(node, module_names)} {handler} prunes")
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
    if isinstance(module, nn.LayerNorm) and both:
        if len(module.normalized_shape) != 1:
            return None, f"LayerNorm {label} normalizes over more than the channels"
        return LAYERNORM, None
    if isinstance(module, nn.Parameter) and both:
        if not _per_channel(module):
            return None, f"parameter {label} of shape {list(module.shape)} is not a per-channel scale"
        return PARAMETER, None
    holds_tensors = isinstance(module, nn.Module) and any(
        True for _ in (*module.parameters(recurse=False), *module.buffers(recurse=False))
    )
    if isinstance(module, nn.Module) and not holds_tensors:
        return None, None  # Torch-Pruning's placeholder ops (add, cat, flatten, ...) hold no tensors
    return None, f"{label} ({type(module).__name__}) cannot be sliced by acp"


def _per_channel(parameter: torch.Tensor) -> bool:
    """One value per channel along dim 0, as a layer scale of shape (C,) or (C, 1, 1)."""
    return parameter.dim() >= 1 and parameter.numel() == parameter.shape[0]


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
        # a PARAMETER member is named by the parameter itself, the others by their module
        owner, attribute = name.rpartition(".")[::2] if kind == PARAMETER else (name, "")
        module = model.get_submodule(owner)
        size = getattr(module, attribute).shape[0] if kind == PARAMETER else _dimension_size(module, kind)
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
        elif kind == PARAMETER:
            _replace_parameter(module, attribute, 0, keep)
        elif kind == LAYERNORM:
            _replace_parameter(module, "weight", 0, keep)
            _replace_parameter(module, "bias", 0, keep)
            module.normalized_shape = (module.normalized_shape[0] - removed,)
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
    if kind == LAYERNORM:
        return module.normalized_shape[0]
    return module.num_parameters
