"""Per-group clustering of channel descriptors -> proposed widths (the PSO seed).

Two modes, both on the cosine distance between channel descriptors (see ``acp.propose.features``):

- ``"budget"`` (default): one agglomerative dendrogram per group (average linkage), computed once. A single
  global distance threshold ``t`` cuts every dendrogram; a group's proposed width is its number of clusters
  at ``t``, clipped to the group's bounds and snapped to its allowed widths. ``t`` is the smallest merge
  height (found by bisection over the sorted merge heights of all groups) whose widths meet the FLOPs
  and/or params budget under the exact cost model. Groups whose channels are redundant shrink first.
- ``"dbscan"``: the ACP paper's rule -- DBSCAN per group, width = clusters + noise points; ``eps`` (one
  global value) is the compression knob and no budget is enforced.

Dead channels (all-zero maps) carry no information: they are left out of the clustering and count as
zero clusters, so a group's proposal never spends width on them (bounds still apply).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from acp.errors import UserError
from acp.propose.features import FeatureStatistics, GroupStatistics
from acp.settings import ProposeSettings

log = logging.getLogger(__name__)

MODES = ("budget", "dbscan")
DEFAULT_MIN_SAMPLES = ProposeSettings().min_samples  # as in the ACP paper's code


@dataclass(frozen=True)
class Dendrogram:
    """Average-linkage dendrogram of a group's live channels.

    ``heights`` are the merge distances in merge order (non-decreasing). ``ranking`` lists the group's
    channels in the order cutting the dendrogram into more and more clusters introduces them: cutting into
    ``k`` clusters and keeping one representative per cluster -- the member whose descriptor has the
    largest L2 norm (the strongest response; ties -> lower channel index) -- keeps exactly
    ``ranking[:k]``. The representative of a cluster is also the representative of whichever child holds
    it, so selections are nested across widths. Dead channels come last (pruned first).
    """

    heights: np.ndarray  # (live - 1,) float64
    ranking: np.ndarray  # (C,) int64
    live: int

    def clusters_at(self, threshold: float) -> int:
        """Number of clusters of live channels after every merge with height <= threshold."""
        if self.live == 0:
            return 0
        return self.live - int(np.searchsorted(self.heights, threshold, side="right"))


def cosine_distances(stats: GroupStatistics, channels: np.ndarray) -> np.ndarray:
    """Square cosine distance matrix (float64, zero diagonal, in [0, 2]) among ``channels``."""
    similarity = stats.cosine_similarity()[np.ix_(channels, channels)]
    distances = 1.0 - similarity
    np.fill_diagonal(distances, 0.0)
    return np.clip(distances, 0.0, 2.0)


def group_dendrogram(stats: GroupStatistics) -> Dendrogram:
    """The group's dendrogram, computed once and cached on ``stats``."""
    return stats.cached("dendrogram", lambda: _build_dendrogram(stats))


def _build_dendrogram(stats: GroupStatistics) -> Dendrogram:
    dead = stats.dead()
    live_channels = np.flatnonzero(~dead)
    dead_channels = np.flatnonzero(dead)
    live = len(live_channels)
    if live <= 1:
        ranking = np.concatenate([live_channels, dead_channels]).astype(np.int64)
        return Dendrogram(heights=np.zeros(0), ranking=_frozen(ranking), live=live)
    distances = cosine_distances(stats, live_channels)
    merges = linkage(squareform(distances, checks=False), method="average")
    # Average linkage has no inversions; the running maximum only guards against float round-off.
    heights = np.maximum.accumulate(merges[:, 2])
    norms = stats.descriptor_norms()[live_channels]
    representative = np.empty(2 * live - 1, dtype=np.int64)  # local index of each node's representative
    representative[:live] = np.arange(live)
    for step, (left, right) in enumerate(merges[:, :2].astype(np.int64)):
        a, b = representative[left], representative[right]
        representative[live + step] = a if (norms[a], -a) >= (norms[b], -b) else b
    # Undo merges from the last: each split introduces the representative of the child that lacks the
    # parent's representative.
    order = [representative[2 * live - 2]]
    for step in range(live - 2, -1, -1):
        left, right = merges[step, :2].astype(np.int64)
        parent = representative[live + step]
        order.append(representative[right] if representative[left] == parent else representative[left])
    ranking = np.concatenate([live_channels[np.asarray(order)], dead_channels]).astype(np.int64)
    return Dendrogram(heights=heights, ranking=_frozen(ranking), live=live)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def dbscan_clusters(stats: GroupStatistics, eps: float, min_samples: int = DEFAULT_MIN_SAMPLES) -> int:
    """Clusters + noise points of DBSCAN (cosine distance) over the group's live channels."""
    from sklearn.cluster import DBSCAN

    live_channels = np.flatnonzero(~stats.dead())
    if len(live_channels) == 0:
        return 0
    distances = cosine_distances(stats, live_channels)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(distances).labels_
    return int(len(np.unique(labels[labels >= 0])) + np.count_nonzero(labels < 0))


@dataclass(frozen=True)
class Proposal:
    """Proposed widths for every group of a space, in space order.

    ``threshold`` is the cut distance in budget mode (-1.0 when the budget allows keeping every live
    channel, i.e. no merge at all) or ``eps`` in dbscan mode. ``cluster_counts`` are the raw cluster
    counts before the group bounds and rounding turned them into ``widths``.
    """

    group_ids: tuple[str, ...]
    full_widths: np.ndarray  # (G,) int64
    widths: np.ndarray  # (G,) int64, allowed by the space
    cluster_counts: np.ndarray  # (G,) int64, before bounds and rounding
    mode: str
    threshold: float  # distance threshold (budget mode) or eps (dbscan mode)
    macs: int
    params: int
    base_macs: int
    base_params: int
    budget: dict = field(default_factory=dict)  # {"flops": float | None, "params": float | None}

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.base_macs

    @property
    def params_ratio(self) -> float:
        return self.params / self.base_params

    def width_map(self) -> dict[str, int]:
        return {group_id: int(width) for group_id, width in zip(self.group_ids, self.widths)}

    def summary_lines(self) -> list[str]:
        """Human-readable table: one line per group (full -> proposed width), then the cost."""
        name_width = max((len(group_id) for group_id in self.group_ids), default=5)
        lines = [f"{'group':<{name_width}}  full -> width  clusters"]
        for group_id, full, width, count in zip(
            self.group_ids, self.full_widths, self.widths, self.cluster_counts
        ):
            lines.append(f"{group_id:<{name_width}}  {full:>4} -> {width:>5}  {count:>8}")
        knob = "distance threshold" if self.mode == "budget" else "eps"
        lines.append(
            f"mode {self.mode}, {knob} {self.threshold:.6g}; "
            f"MACs (FLOPs) {self.macs:,} of {self.base_macs:,} ({self.macs_ratio:.1%}); "
            f"params {self.params:,} of {self.base_params:,} ({self.params_ratio:.1%})"
        )
        return lines


def propose_widths(
    stats: FeatureStatistics,
    space: Any,
    *,
    flops: float | None = None,
    params: float | None = None,
    mode: str = "budget",
    eps: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    budget_check=None,
) -> Proposal:
    """Widths proposed by clustering every group's channels.

    ``mode="budget"`` needs ``flops`` and/or ``params`` (ratios of the base model, in (0, 1]), or a
    ``budget_check`` (an :class:`acp.core.budget.Budget`: e.g. a latency budget), and returns the
    least-compressed cut that meets all of them; ``mode="dbscan"`` needs ``eps`` and takes no budget.
    Raises UserError for bad settings and for a budget even the smallest allowed widths cannot meet.
    """
    if mode not in MODES:
        raise UserError(f"cluster mode must be one of {', '.join(MODES)}, got {mode!r}")
    budget = {"flops": _ratio("flops", flops), "params": _ratio("params", params)}
    group_stats = [stats.group(group.id) for group in space.groups]
    for group, group_stat in zip(space.groups, group_stats):
        if group_stat.width != group.full_width:
            raise UserError(
                f"feature statistics of group {group.id!r} have {group_stat.width} channels, "
                f"the space says {group.full_width}"
            )
    if mode == "dbscan":
        if budget["flops"] is not None or budget["params"] is not None:
            raise UserError("cluster mode 'dbscan' takes eps, not a flops/params budget (use mode 'budget')")
        if eps is None or not np.isfinite(eps) or eps <= 0:
            raise UserError(f"cluster mode 'dbscan' needs eps > 0, got {eps!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise UserError(f"cluster min_samples must be an integer >= 1, got {min_samples!r}")
        counts = np.array([dbscan_clusters(g, eps, min_samples) for g in group_stats], dtype=np.int64)
        return _make_proposal(space, counts, mode, float(eps), budget)
    if budget["flops"] is None and budget["params"] is None and budget_check is None:
        raise UserError("cluster mode 'budget' needs a flops and/or params ratio")
    dendrograms = [group_dendrogram(g) for g in group_stats]
    thresholds = np.unique(np.concatenate([[-1.0], *(d.heights for d in dendrograms)]))

    def counts_at(index: int) -> np.ndarray:
        return np.array([d.clusters_at(thresholds[index]) for d in dendrograms], dtype=np.int64)

    def meets(index: int) -> bool:
        widths = _widths_from_counts(space, counts_at(index))
        macs, n_params = space.cost(widths)
        if budget_check is not None and not budget_check.fits_widths(widths[None, :])[0]:
            return False
        return _within(macs, n_params, space, budget)

    last = len(thresholds) - 1
    if not meets(last):
        macs, n_params = space.cost(_widths_from_counts(space, counts_at(last)))
        raise UserError(
            f"budget {_budget_text(budget)} is infeasible: the smallest widths the space allows cost "
            f"{macs:,} MACs ({macs / space.base_macs:.1%}) and {n_params:,} params "
            f"({n_params / space.base_params:.1%})"
        )
    low, high = 0, last  # invariant: meets(high); the answer is the smallest index that meets the budget
    if meets(low):
        high = low
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return _make_proposal(space, counts_at(high), mode, float(thresholds[high]), budget)


def _ratio(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"budget {name} must be a ratio in (0, 1], got {value!r}")
    return float(value)


def _within(macs: int, n_params: int, space: Any, budget: Mapping[str, float | None]) -> bool:
    if budget["flops"] is not None and macs > budget["flops"] * space.base_macs:
        return False
    return not (budget["params"] is not None and n_params > budget["params"] * space.base_params)


def _budget_text(budget: Mapping[str, float | None]) -> str:
    return ", ".join(f"{name}={value}" for name, value in budget.items() if value is not None)


def _widths_from_counts(space: Any, counts: np.ndarray) -> np.ndarray:
    low = np.array([group.min_width for group in space.groups], dtype=np.int64)
    high = np.array([group.full_width for group in space.groups], dtype=np.int64)
    return np.asarray(space.snap(np.clip(counts, low, high)), dtype=np.int64)


def _make_proposal(space: Any, counts: np.ndarray, mode: str, threshold: float, budget: dict) -> Proposal:
    widths = _widths_from_counts(space, counts)
    macs, n_params = space.cost(widths)
    return Proposal(
        group_ids=tuple(group.id for group in space.groups),
        full_widths=np.asarray(space.full_widths(), dtype=np.int64),
        widths=widths,
        cluster_counts=counts,
        mode=mode,
        threshold=threshold,
        macs=int(macs),
        params=int(n_params),
        base_macs=int(space.base_macs),
        base_params=int(space.base_params),
        budget=dict(budget),
    )


def proposal_to_architecture(
    proposal: Proposal,
    space: Any,
    identity: Any,
    criterion: Any,
    *,
    space_settings: Mapping[str, Any],
    seed: int | None = None,
):
    """The proposal as an ``acp.core.architecture.Architecture`` whose kept channels come from ``criterion``.

    ``criterion`` is an ``acp.propose.criteria.Criterion`` built for the same space (usually ``cluster``).
    """
    from acp.core.architecture import Architecture

    if proposal.group_ids != tuple(group.id for group in space.groups):
        raise UserError("proposal was made for a different channel space (group ids differ)")
    widths = proposal.width_map()
    return Architecture.from_widths(
        space,
        identity,
        widths,
        criterion.keep(widths),
        budget=dict(proposal.budget),
        space_settings=dict(space_settings),
        provenance={
            "source": "cluster",
            "seed": seed,
            "criterion": criterion.name,
            "evaluations": None,
            "proxy_score": None,
        },
    )
