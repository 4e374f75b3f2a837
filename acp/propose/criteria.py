"""Channel-importance criteria: which channels of a group survive at a given width.

Every criterion ranks a group's channels, most important first, deterministically (ties -> lower channel
index first), and ``select(group_id, width)`` keeps the first ``width`` of that ranking, returned sorted.
Selections are therefore nested across widths. Rankings are computed on first use per group and cached,
since a search asks for thousands of selections.

Criteria (``CRITERIA``):

- ``cluster``: cut the group's average-linkage cosine dendrogram into ``width`` clusters and keep
  one representative per cluster, the member with the largest descriptor L2 norm (see
  ``acp.propose.clustering.Dendrogram``). Keeps the most diverse channels; duplicates go first.
- ``l1`` / ``l2`` (``l2`` is the default): weight norm of each output filter of the group's producer layers,
  summed over producers. Why ``l2`` and not ``cluster`` by default: on the shared ResNet-20 at 50% MACs,
  ``cluster`` picks channels no better than random (bench_criteria: 45.9% vs random 43.5-48.9%, l2 61.3%
  after BN recalibration), and acp's PSO with ``l2`` finds candidates scoring 0.82 on the proxy against
  0.60 with ``cluster`` (bench_quality). Clustering still proposes the widths that seed the search.
- ``bn_scale``: |gamma| summed over the group's BatchNorms (network slimming). Groups without BN fall back
  to ``l1`` (logged).
- ``hrank``: average matrix rank of the channel's ReLU'd feature maps (HRank, CVPR 2020), over the first
  ``hrank_images`` calibration images and all member layers; higher rank = more important.
- ``redundancy``: the redundancy of a channel within a kept set is its largest cosine similarity to any
  other kept channel's descriptor. Channels are removed greedily, most redundant first (ties -> higher
  index first), re-evaluating redundancy among the channels still kept; the ranking is the reverse
  removal order. Dead channels are removed before all others. Of two duplicates one goes first, the other
  is then no longer redundant.
- ``task``: task relevance. With object masks: the share of the channel's mean response that falls inside
  objects, inside / (inside + outside). Otherwise with labels: the Fisher score of the channel's pooled
  response per image, between-class variance / within-class variance (0 when both are 0).
- ``box_relevance`` (detectors): how much more strongly a channel responds inside the object boxes than on
  the background of the calibration images -- the feature-representation criterion (foreground against
  background response intensity; that paper's exact formula is not public, this is acp's). It needs
  statistics with box masks (:func:`acp.propose.detection_features.detection_statistics`: masks at the
  resolution of the detector's transformed images, padding counted as background) and is a UserError on
  statistics without them (a classifier's). Per channel, with ``a`` the ReLU of its BatchNorm output (the
  producer's output in a group without BN) at member layer ``l``, image ``n``, map cell ``p``, and ``m``
  the fraction of that cell's input pixels inside a box (the mask area-downsampled to the map)::

      inside  = sum_{l,n,p} a * m       / sum_{l,n,p} m
      outside = sum_{l,n,p} a * (1 - m) / sum_{l,n,p} (1 - m)
      box_relevance = inside / (inside + outside)        (0 when both are 0)

  i.e. the mean response per unit of object area against per unit of background area, pooled over member
  layers and images (an image with more object area, a member with a larger map, weighs more). 1 = fires
  only inside boxes, 0.5 = indifferent, 0 = only on the background or never. It orders channels as the
  ratio inside / outside does, without dividing by zero for a channel silent on the background. The number
  is the statistics' ``foreground_share``, which ``task`` also scores when masks are present;
  ``box_relevance`` refuses statistics without masks instead of falling back to labels.
- ``random``: a seeded permutation per group (independent of group order).
"""

from __future__ import annotations

import difflib
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from acp.errors import UserError
from acp.propose.clustering import group_dendrogram
from acp.propose.features import FeatureStatistics, GroupStatistics

log = logging.getLogger(__name__)


class Criterion:
    """Base class: subclasses implement ``_rank(group)`` or ``_scores(group)`` (higher = keep)."""

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    needs_statistics: ClassVar[bool] = False

    def __init__(
        self,
        space: Any,
        *,
        model: nn.Module | None = None,
        statistics: FeatureStatistics | None = None,
        seed: int = 0,
    ):
        if self.needs_model and model is None:
            raise UserError(f"criterion {self.name!r} needs the model's weights")
        if self.needs_statistics and statistics is None:
            raise UserError(f"criterion {self.name!r} needs feature statistics from calibration images")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"criterion seed must be an integer, got {seed!r}")
        self.space = space
        self.model = model
        self.statistics = statistics
        self.seed = seed
        self._groups = {group.id: group for group in space.groups}
        self._rankings: dict[str, np.ndarray] = {}
        self._modules: dict[str, nn.Module] | None = None

    def group(self, group_id: str):
        try:
            return self._groups[group_id]
        except KeyError:
            close = difflib.get_close_matches(group_id, list(self._groups), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise UserError(f"criterion {self.name!r}: unknown group {group_id!r}{hint}") from None

    def ranking(self, group_id: str) -> np.ndarray:
        """All channel indices of the group, most important first (read-only int64 array)."""
        ranking = self._rankings.get(group_id)
        if ranking is None:
            group = self.group(group_id)
            ranking = np.ascontiguousarray(self._rank(group), dtype=np.int64)
            if sorted(ranking.tolist()) != list(range(group.full_width)):
                raise ValueError(f"criterion {self.name!r} produced a bad ranking for group {group_id!r}")
            ranking.setflags(write=False)
            self._rankings[group_id] = ranking
        return ranking

    def select(self, group_id: str, width: int) -> np.ndarray:
        """Sorted int64 indices of the ``width`` channels kept in the group."""
        ranking = self.ranking(group_id)
        width = int(width)
        if not 1 <= width <= len(ranking):
            raise UserError(
                f"criterion {self.name!r}: group {group_id!r}: width {width} out of range 1..{len(ranking)}"
            )
        return np.sort(ranking[:width])

    def keep(self, widths: Mapping[str, int] | Sequence[int] | np.ndarray) -> dict[str, tuple[int, ...]]:
        """Kept channel indices for every group: ``widths`` by group id, or in space order."""
        if isinstance(widths, Mapping):
            items = list(widths.items())
        else:
            values = np.asarray(widths).reshape(-1)
            if len(values) != len(self.space.groups):
                raise UserError(
                    f"criterion {self.name!r}: {len(values)} widths for {len(self.space.groups)} groups"
                )
            items = [(group.id, int(value)) for group, value in zip(self.space.groups, values)]
        return {group_id: tuple(self.select(group_id, width).tolist()) for group_id, width in items}

    def _rank(self, group) -> np.ndarray:
        return rank_by_scores(self._scores(group))

    def _scores(self, group) -> np.ndarray:
        raise NotImplementedError

    def _group_statistics(self, group) -> GroupStatistics:
        stats = self.statistics.group(group.id)
        if stats.width != group.full_width:
            raise UserError(
                f"feature statistics of group {group.id!r} have {stats.width} channels, the space says "
                f"{group.full_width}"
            )
        return stats

    def _module(self, name: str) -> nn.Module:
        if self._modules is None:
            self._modules = dict(self.model.named_modules())
        module = self._modules.get(name)
        if module is None:
            raise UserError(f"criterion {self.name!r}: the model has no module {name!r}")
        return module

    def _filter_norms(self, group, order: int) -> np.ndarray:
        """Per output channel: L-``order`` norm of the producer filters' weights, summed over producers."""
        total = np.zeros(group.full_width, dtype=np.float64)
        for name in group.producers:
            weight = self._module(name).weight.detach().double().cpu()
            if weight.shape[0] != group.full_width:
                raise ValueError(
                    f"producer {name!r} has {weight.shape[0]} outputs, "
                    f"group {group.id!r} has {group.full_width}"
                )
            total += torch.linalg.vector_norm(weight.reshape(weight.shape[0], -1), ord=order, dim=1).numpy()
        return total


def rank_by_scores(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties -> lower index first; NaN counts as the lowest score."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    return np.lexsort((np.arange(len(scores)), -scores))


class ClusterCriterion(Criterion):
    name = "cluster"
    needs_statistics = True

    def _rank(self, group) -> np.ndarray:
        return np.asarray(group_dendrogram(self._group_statistics(group)).ranking)


class _WeightNormCriterion(Criterion):
    needs_model = True
    order: ClassVar[int] = 1

    def _scores(self, group) -> np.ndarray:
        return self._filter_norms(group, self.order)


class L1Criterion(_WeightNormCriterion):
    name = "l1"
    order = 1


class L2Criterion(_WeightNormCriterion):
    name = "l2"
    order = 2


class BNScaleCriterion(Criterion):
    name = "bn_scale"
    needs_model = True

    def _scores(self, group) -> np.ndarray:
        if not group.norms:
            log.info("criterion bn_scale: group %s has no BatchNorm; ranking it by l1", group.id)
            return self._filter_norms(group, 1)
        total = np.zeros(group.full_width, dtype=np.float64)
        for name in group.norms:
            gamma = self._module(name).weight
            if gamma is None:  # affine=False: every channel has scale 1
                continue
            total += gamma.detach().double().abs().cpu().numpy()
        return total


class HRankCriterion(Criterion):
    name = "hrank"
    needs_statistics = True

    def _scores(self, group) -> np.ndarray:
        stats = self._group_statistics(group)
        if stats.hrank is None:
            raise UserError("criterion 'hrank' needs statistics collected with hrank_images > 0")
        return stats.hrank


class RedundancyCriterion(Criterion):
    name = "redundancy"
    needs_statistics = True

    def _rank(self, group) -> np.ndarray:
        stats = self._group_statistics(group)
        return redundancy_ranking(stats.cosine_similarity(), stats.dead())


def redundancy_ranking(similarity: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Greedy removal of the most redundant channel (see module docstring); returns most important first."""
    removed: list[int] = [int(c) for c in np.flatnonzero(dead)[::-1]]
    alive = np.flatnonzero(~dead)
    count = len(alive)
    sim = np.array(similarity[np.ix_(alive, alive)], dtype=np.float64)
    np.fill_diagonal(sim, -np.inf)
    active = np.ones(count, dtype=bool)
    best = sim.max(axis=1) if count > 1 else np.full(count, -np.inf)
    for _ in range(max(count - 1, 0)):
        candidates = np.where(active, best, -np.inf)
        # argmax over the reversed array finds the highest index among tied maxima.
        victim = count - 1 - int(np.argmax(candidates[::-1]))
        removed.append(int(alive[victim]))
        active[victim] = False
        column = sim[:, victim].copy()
        sim[:, victim] = -np.inf
        # Only rows whose maximum was attained at the removed channel can change.
        stale = np.flatnonzero(active & (column >= best))
        if len(stale):
            best[stale] = sim[stale].max(axis=1)
    if count:
        removed.append(int(alive[np.flatnonzero(active)[0]]))
    return np.array(removed[::-1], dtype=np.int64)


class TaskCriterion(Criterion):
    name = "task"
    needs_statistics = True

    def _scores(self, group) -> np.ndarray:
        stats = self._group_statistics(group)
        if stats.foreground_share is not None:
            return stats.foreground_share
        labels = self.statistics.labels
        if labels is None:
            raise UserError("criterion 'task' needs labels (or object masks) in the feature statistics")
        return fisher_scores(stats.mean_response, labels)


class BoxRelevanceCriterion(Criterion):
    name = "box_relevance"
    needs_statistics = True

    def __init__(
        self,
        space: Any,
        *,
        model: nn.Module | None = None,
        statistics: FeatureStatistics | None = None,
        seed: int = 0,
    ):
        super().__init__(space, model=model, statistics=statistics, seed=seed)
        if not self.statistics.has_masks:  # refused before any ranking is asked for
            raise UserError(_NEEDS_BOXES)

    def _scores(self, group) -> np.ndarray:
        stats = self._group_statistics(group)
        if stats.foreground_share is None:
            raise UserError(f"{_NEEDS_BOXES} (group {group.id!r} has no inside/outside responses)")
        return stats.foreground_share


_NEEDS_BOXES = (
    "criterion 'box_relevance' needs detection statistics with object boxes "
    "(acp.propose.detection_features.detection_statistics); use task or l2 for classifiers"
)


def fisher_scores(responses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column: sum_k n_k (mean_k - mean)^2 / sum_k n_k var_k (0 where both are 0, inf if only var is)."""
    responses = np.asarray(responses, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    overall = responses.mean(axis=0)
    between = np.zeros(responses.shape[1])
    within = np.zeros(responses.shape[1])
    for label in np.unique(labels):
        members = responses[labels == label]
        between += len(members) * (members.mean(axis=0) - overall) ** 2
        within += len(members) * members.var(axis=0)
    # Relative tolerance: a numerically constant response carries no class information.
    scale = np.maximum(np.abs(responses).max(axis=0, initial=0.0), 1e-300) ** 2 * len(responses)
    between = np.where(between <= 1e-12 * scale, 0.0, between)
    within = np.where(within <= 1e-12 * scale, 0.0, within)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = between / np.where(within > 0, within, 1.0)
    return np.where(within > 0, ratio, np.where(between > 0, np.inf, 0.0))


class RandomCriterion(Criterion):
    name = "random"

    def _rank(self, group) -> np.ndarray:
        # Seeded by (seed, group id) so a group's ranking does not depend on which other groups exist.
        generator = np.random.default_rng([self.seed, zlib.crc32(group.id.encode("utf-8"))])
        return generator.permutation(group.full_width)


# The names are declared once in acp.settings (so a bad name is refused before any work); this registry
# must provide exactly those (checked by tests/propose/test_criteria.py).
CRITERIA: dict[str, type[Criterion]] = {
    criterion.name: criterion
    for criterion in (
        ClusterCriterion,
        L1Criterion,
        L2Criterion,
        BNScaleCriterion,
        HRankCriterion,
        RedundancyCriterion,
        TaskCriterion,
        BoxRelevanceCriterion,
        RandomCriterion,
    )
}


class RankedCriterion:
    """Channel rankings frozen into plain data (a run's ``proposal.json``), usable as a criterion."""

    def __init__(self, name: str, rankings: Mapping[str, Sequence[int]]):
        self.name = name
        self._rankings = {group_id: np.asarray(order, dtype=np.int64) for group_id, order in rankings.items()}

    def ranking(self, group_id: str) -> np.ndarray:
        return self._rankings[group_id]

    def select(self, group_id: str, width: int) -> np.ndarray:
        return np.sort(self._rankings[group_id][:width])

    @classmethod
    def freeze(cls, criterion: Criterion) -> RankedCriterion:
        """Every group's ranking of ``criterion``, computed now."""
        return cls(
            criterion.name,
            {group.id: criterion.ranking(group.id).tolist() for group in criterion.space.groups},
        )


def make_criterion(
    name: str,
    space: Any,
    *,
    model: nn.Module | None = None,
    statistics: FeatureStatistics | None = None,
    seed: int = 0,
) -> Criterion:
    """The criterion called ``name`` for ``space``; UserError (with close matches) for unknown names."""
    cls = CRITERIA.get(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name), list(CRITERIA), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown criterion {name!r}{hint} (known: {', '.join(CRITERIA)})")
    return cls(space, model=model, statistics=statistics, seed=seed)
