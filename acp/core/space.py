"""ChannelSpace: the searchable channel groups of a model and the exact cost of any choice of widths.

A *group* is a set of channels that must be pruned together (a residual stage's outputs with every conv
that adds into them, a depthwise conv with the conv that feeds it, a concat's inputs with the layers that
read the concat); it is named after its root, the first Conv2d/Linear (in module definition order) whose
output channels are the group. Dependencies come from Torch-Pruning's DependencyGraph, read once by
:mod:`acp.core.graph`; the graph itself is not kept, so a space is plain data (numpy arrays, names) that
pickles cheaply to worker processes.

``space.cost(widths)`` gives (MACs, params) exactly as ``tp.utils.count_ops_and_params`` would count them
on the materialized model, without building one (see :mod:`acp.core.costs`).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acp.core import costs
from acp.core import graph as _graph
from acp.core.layers import ComputeLayer, ElementwiseCall, collect_layers
from acp.errors import UserError
from acp.models.detection import traced_network
from acp.settings import SpaceSettings

log = logging.getLogger(__name__)

DEFAULT_SPACE = SpaceSettings()


@dataclass(frozen=True)
class ChannelGroup:
    """One searchable dimension: a set of coupled channels and the widths it may take."""

    id: str
    full_width: int
    min_width: int
    max_width: int
    round_to: int
    producers: tuple[str, ...]  # Conv2d/Linear whose output channel c is group channel c
    norms: tuple[str, ...]  # BatchNorm layers over exactly the group's channels (index c == channel c)
    consumers: tuple[str, ...]  # layers whose input channels contain the group's channels

    def allowed_widths(self) -> np.ndarray:
        """Multiples of ``round_to`` in [min_width, full_width], plus full_width; sorted int64."""
        start = -(-self.min_width // self.round_to) * self.round_to
        multiples = np.arange(start, self.full_width + 1, self.round_to, dtype=np.int64)
        return np.union1d(multiples, np.array([self.min_width, self.full_width], dtype=np.int64))


@dataclass(frozen=True)
class FixedGroup:
    """A group that is not searched (kept at full width), and why."""

    id: str
    full_width: int
    reason: str


def min_width_for(full_width: int, min_keep: float, round_to: int) -> int:
    """Smallest allowed width: ``ceil(min_keep * full)`` (at least 1) rounded up to ``round_to``, <= full."""
    at_least = max(1, math.ceil(min_keep * full_width - 1e-9))  # 0.3 * 10 is 3.0000000000000004
    rounded = -(-at_least // round_to) * round_to
    return min(rounded, full_width)


class ChannelSpace:
    """Searchable channel groups of one model at one input size, with an exact integer cost model.

    Build it with :meth:`build`. ``groups`` are the dimensions in module definition order; widths are
    passed as a mapping ``{group id: width}`` (missing groups = full width), a sequence in group order, or
    a (P, G) array for a whole swarm.
    """

    def __init__(
        self,
        groups: Sequence[ChannelGroup],
        input_shape: tuple[int, ...],
        macs: costs.Polynomial,
        params: costs.Polynomial,
        plans: Sequence[Sequence[_graph.Member]],
        *,
        settings: Mapping,
        fixed_groups: Sequence[FixedGroup] = (),
        classifiers: Sequence[str] = (),
        compute_layers: Sequence[ComputeLayer] = (),
        elementwise_calls: Sequence[ElementwiseCall] = (),
    ):
        self.groups: tuple[ChannelGroup, ...] = tuple(groups)
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in input_shape)
        self._macs, self._params = macs, params
        self._plans = tuple(tuple(plan) for plan in plans)
        self._index = {group.id: i for i, group in enumerate(self.groups)}
        self.settings: dict = dict(settings)
        self.fixed_groups: tuple[FixedGroup, ...] = tuple(fixed_groups)
        self.classifiers: tuple[str, ...] = tuple(classifiers)
        # per forward call: what the latency model measures (see acp.core.layers)
        self.compute_layers: tuple[ComputeLayer, ...] = tuple(compute_layers)
        self.elementwise_calls: tuple[ElementwiseCall, ...] = tuple(elementwise_calls)
        full = self.full_widths()[None, :]
        self.base_macs: int = int(macs(full)[0])
        self.base_params: int = int(params(full)[0])

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        ignored_layers: Sequence[str] = (),
        round_to: int = DEFAULT_SPACE.round_to,
        min_keep: float = DEFAULT_SPACE.min_keep,
        model_name: str | None = None,
    ) -> ChannelSpace:
        """Analyse ``model`` (left untouched: the work happens on a copy) with one traced forward pass.

        ``ignored_layers``: module names or fnmatch globs whose output channels must not change (the
        layers producing the model output are always added). A group is searchable when none of its
        layers is ignored, acp can slice all of them, and its allowed widths are more than one.
        ``model_name`` names the model in errors (default: its class name). A torchvision detector is
        traced through its network view (:func:`acp.models.detection.traced_network`: backbone and heads
        on a batch of ``example_input``'s shape, under the detector's own module names), so the space
        slices the detector itself.
        """
        checked = SpaceSettings(round_to=round_to, min_keep=min_keep)  # the one place ranges are checked
        round_to, min_keep = checked.round_to, checked.min_keep
        if isinstance(ignored_layers, str):
            ignored_layers = [ignored_layers]
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
            raise UserError("example_input: expected a tensor of shape (batch, channels, ...)")
        device = next(model.parameters(), example_input).device
        example = torch.zeros((1, *example_input.shape[1:]), dtype=example_input.dtype, device=device)
        network = traced_network(model)
        analysis = _graph.analyze(network, example, list(ignored_layers), model_name)

        searchable: list[int] = []
        fixed: list[FixedGroup] = []
        for index, raw in enumerate(analysis.groups):
            reason = None
            if raw.blocked_by is not None:
                which = "classifier" if raw.blocked_by in analysis.classifiers else "ignored layer"
                reason = f"changes the outputs of {which} {raw.blocked_by}"
            elif raw.unsupported is not None:
                reason = raw.unsupported
            elif min_width_for(raw.full_width, min_keep, round_to) >= raw.full_width:
                reason = f"no freedom at min_keep={min_keep}, round_to={round_to}"
            if reason is None:
                searchable.append(index)
            else:
                fixed.append(FixedGroup(raw.id, raw.full_width, reason))
                if raw.unsupported is not None and raw.blocked_by is None and raw.passes_through is None:
                    log.warning("channel group %s is kept at full width: %s", raw.id, reason)

        # A searchable group may still change a layer acp cannot count; then it stays fixed, with a warning.
        while True:
            try:
                macs_terms, params_terms, from_counter = costs.collect_terms(analysis, set(searchable))
                break
            except costs.CostModelError as error:
                culprit = error.group_index
                searchable.remove(culprit)
                raw = analysis.groups[culprit]
                fixed.append(FixedGroup(raw.id, raw.full_width, str(error)))
                log.warning("channel group %s is kept at full width: %s", raw.id, error)
        macs_terms, _, _ = costs.check_against_counter(
            analysis, example, macs_terms, params_terms, from_counter
        )

        groups = [_describe_group(analysis.groups[i], round_to, min_keep, analysis.model) for i in searchable]
        columns = {group_index: column for column, group_index in enumerate(searchable)}
        full_widths = np.array([group.full_width for group in groups], dtype=np.int64)
        fixed.sort(key=lambda group: [raw.id for raw in analysis.groups].index(group.id))
        compute_layers, elementwise_calls = collect_layers(analysis, columns, full_widths)
        return cls(
            groups,
            tuple(example.shape),
            costs.assemble(macs_terms, columns, full_widths),
            costs.assemble(params_terms, columns, full_widths),
            [analysis.groups[i].members for i in searchable],
            settings={"round_to": round_to, "min_keep": min_keep, "ignored_layers": list(ignored_layers)},
            fixed_groups=fixed,
            classifiers=analysis.classifiers,
            compute_layers=compute_layers,
            elementwise_calls=elementwise_calls,
        )

    # --- lookup ------------------------------------------------------------------------------------

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(group.id for group in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return (
            f"ChannelSpace({len(self.groups)} groups, input {list(self.input_shape)}, "
            f"{self.base_macs} MACs, {self.base_params} params)"
        )

    def index(self, group_id: str) -> int:
        try:
            return self._index[group_id]
        except KeyError:
            raise UserError(f"unknown channel group {group_id!r}") from None

    def group(self, group_id: str) -> ChannelGroup:
        return self.groups[self.index(group_id)]

    def full_widths(self) -> np.ndarray:
        return np.array([group.full_width for group in self.groups], dtype=np.int64)

    def min_widths(self) -> np.ndarray:
        return np.array([group.min_width for group in self.groups], dtype=np.int64)

    # --- widths ------------------------------------------------------------------------------------

    def as_matrix(self, widths) -> tuple[np.ndarray, bool]:
        """(P, G) int64 matrix of widths and whether the input was a single vector; validates ranges."""
        if isinstance(widths, Mapping):
            row = self.full_widths()
            for group_id, width in widths.items():
                row[self.index(group_id)] = _integer(width, f"widths[{group_id!r}]")
            matrix, single = row[None, :], True
        else:
            array = np.asarray(widths)
            if array.ndim not in (1, 2) or array.shape[-1] != len(self.groups):
                raise UserError(
                    f"widths: expected {len(self.groups)} values per row (one per group), "
                    f"got an array of shape {array.shape}"
                )
            whole = array.dtype.kind in "iu" or (
                array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
            )
            if not whole:
                raise UserError("widths: expected whole numbers (use snap() for continuous positions)")
            single = array.ndim == 1
            matrix = np.atleast_2d(array).astype(np.int64)
        bad = (matrix < 1) | (matrix > self.full_widths()[None, :])
        if bad.any():
            row, column = np.argwhere(bad)[0]
            group = self.groups[column]
            raise UserError(
                f"widths: group {group.id!r} width {int(matrix[row, column])} "
                f"out of range [1, {group.full_width}]"
            )
        return matrix, single

    def cost(self, widths) -> tuple[int, int] | tuple[np.ndarray, np.ndarray]:
        """(MACs, params) of the pruned model: python ints for one width vector, int64 arrays for (P, G).

        Equal to ``tp.utils.count_ops_and_params(materialize(...), example_input)`` (MACs as int).
        """
        matrix, single = self.as_matrix(widths)
        macs, params = self._macs(matrix), self._params(matrix)
        if single:
            return int(macs[0]), int(params[0])
        return macs, params

    def snap(self, widths) -> np.ndarray:
        """Nearest allowed width per group (ties go up), for one vector or a (P, G) matrix of reals."""
        array = np.asarray(widths, dtype=np.float64)
        if array.ndim not in (1, 2) or array.shape[-1] != len(self.groups):
            raise UserError(f"widths: expected {len(self.groups)} values per row, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise UserError("widths: must be finite numbers")
        step = np.array([group.round_to for group in self.groups], dtype=np.int64)
        full = self.full_widths()
        low = self.min_widths()  # a multiple of round_to for every searchable group
        multiple = np.floor(array / step + 0.5).astype(np.int64) * step
        multiple = np.clip(multiple, low, np.maximum(full // step * step, low))
        take_full = np.abs(full - array) <= np.abs(multiple - array)
        return np.where(take_full, full, multiple).astype(np.int64)

    def uniform_widths(self, keep_ratio: float) -> np.ndarray:
        """Every group at ``keep_ratio`` of its full width, snapped to the allowed widths."""
        valid = isinstance(keep_ratio, numbers.Real) and not isinstance(keep_ratio, bool)
        if not valid or not 0 < keep_ratio <= 1:
            raise UserError(f"keep_ratio: expected a number in (0, 1], got {keep_ratio!r}")
        return self.snap(keep_ratio * self.full_widths())

    # --- slicing -----------------------------------------------------------------------------------

    def removal_plan(self, keep: Mapping[str, Sequence[int]]) -> dict[tuple[str, str], np.ndarray]:
        """Per (module name, member kind): the indices to drop so that group ``g`` keeps ``keep[g]``.

        Indices are in the unpruned model's coordinates; groups not in ``keep`` keep everything.
        """
        removals: dict[tuple[str, str], list[np.ndarray]] = {}
        for group_id, kept in keep.items():
            index = self.index(group_id)
            removed = np.ones(self.groups[index].full_width, dtype=bool)
            removed[np.asarray(kept, dtype=np.int64)] = False
            if not removed.any():
                continue
            for member in self._plans[index]:
                drop = member.indices[removed[member.roots]]
                if drop.size:
                    removals.setdefault((member.module, member.kind), []).append(drop)
        return {key: np.unique(np.concatenate(parts)) for key, parts in removals.items()}


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise UserError(f"{what}: expected an integer width, got {value!r}")
    return int(value)


def _describe_group(raw: _graph.RawGroup, round_to: int, min_keep: float, model: nn.Module) -> ChannelGroup:
    producers, norms, consumers = [], [], []
    for member in raw.members:
        identity = member.indices.size == raw.full_width and np.array_equal(member.indices, member.roots)
        if identity and member.kind in (_graph.CONV_OUT, _graph.LINEAR_OUT, _graph.DEPTHWISE):
            producers.append(member.module)
        # a norm over exactly the group's channels; one over a concat of them with others (DenseNet's
        # norm1 of every dense layer after the first) reads the group's channels as a consumer does
        if (
            member.kind == _graph.BATCHNORM
            and identity
            and model.get_submodule(member.module).num_features == raw.full_width
        ):
            norms.append(member.module)
        elif member.kind in (_graph.CONV_IN, _graph.LINEAR_IN, _graph.DEPTHWISE, _graph.BATCHNORM):
            consumers.append(member.module)
    return ChannelGroup(
        id=raw.id,
        full_width=raw.full_width,
        min_width=min_width_for(raw.full_width, min_keep, round_to),
        max_width=raw.full_width,
        round_to=round_to,
        producers=tuple(dict.fromkeys(producers)),
        norms=tuple(dict.fromkeys(norms)),
        consumers=tuple(dict.fromkeys(consumers)),
    )
