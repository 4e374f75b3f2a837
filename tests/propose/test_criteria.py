"""Channel-importance criteria on constructed cases whose right answer is known."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from torch import nn

from acp.errors import UserError
from acp.propose.criteria import CRITERIA, fisher_scores, make_criterion, redundancy_ranking
from acp.propose.features import FeatureStatistics, GroupStatistics


@dataclass(frozen=True)
class FakeGroup:
    id: str
    full_width: int
    producers: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    min_width: int = 1
    round_to: int = 1


class FakeSpace:
    def __init__(self, *groups: FakeGroup):
        self.groups = tuple(groups)


def statistics(descriptors: dict[str, np.ndarray], **extra) -> FeatureStatistics:
    """Statistics whose Gram matrices come from explicit channel descriptors (rows)."""
    groups = {}
    for group_id, rows in descriptors.items():
        rows = np.asarray(rows, dtype=np.float64)
        groups[group_id] = GroupStatistics(
            group_id=group_id,
            members=(group_id,),
            gram=rows @ rows.T,
            mean_response=np.zeros((4, len(rows)), dtype=np.float32),
            hrank=extra.get("hrank", {}).get(group_id),
            foreground_share=extra.get("foreground_share", {}).get(group_id),
        )
    labels = extra.get("labels")
    return FeatureStatistics(groups=groups, num_images=4, pool_size=4, hrank_images=4, labels=labels)


def one_group(descriptors: np.ndarray, **extra):
    space = FakeSpace(FakeGroup("g", len(descriptors)))
    return space, statistics({"g": descriptors}, **extra)


def test_cluster_prunes_a_duplicate_first_and_keeps_the_stronger_copy():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(6, 40))
    descriptors[4] = 2.0 * descriptors[1]  # same direction (cosine distance 0), larger norm
    space, stats = one_group(descriptors)
    criterion = make_criterion("cluster", space, statistics=stats)
    assert criterion.ranking("g")[-1] == 1
    assert criterion.select("g", 5).tolist() == [0, 2, 3, 4, 5]


def test_cluster_exact_duplicates_tie_break_to_the_lower_index():
    rng = np.random.default_rng(1)
    descriptors = rng.normal(size=(5, 30))
    descriptors[3] = descriptors[0]
    space, stats = one_group(descriptors)
    criterion = make_criterion("cluster", space, statistics=stats)
    assert criterion.ranking("g")[-1] == 3


def test_dead_channels_are_pruned_first_by_cluster_and_redundancy():
    rng = np.random.default_rng(2)
    descriptors = rng.normal(size=(7, 30))
    descriptors[[2, 5]] = 0.0
    space, stats = one_group(descriptors)
    for name in ("cluster", "redundancy"):
        ranking = make_criterion(name, space, statistics=stats).ranking("g")
        assert ranking[-2:].tolist() == [2, 5], name  # 5 is pruned first, then 2


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(2, 14), seed=st.integers(0, 10_000))
def test_cluster_selection_is_one_strongest_member_per_dendrogram_cluster(channels, seed):
    rng = np.random.default_rng(seed)
    descriptors = rng.normal(size=(channels, 12)) * rng.uniform(0.5, 2.0, size=(channels, 1))
    space, stats = one_group(descriptors)
    criterion = make_criterion("cluster", space, statistics=stats)
    norms = np.linalg.norm(descriptors, axis=1)
    merges = linkage(pdist(descriptors, "cosine"), method="average")
    for width in range(1, channels + 1):
        labels = fcluster(merges, width, criterion="maxclust")
        if len(np.unique(labels)) != width:  # tied merge heights: no exact cut into `width` clusters
            continue
        members = [np.flatnonzero(labels == label) for label in np.unique(labels)]
        expected = sorted(int(cluster[np.argmax(norms[cluster])]) for cluster in members)
        assert criterion.select("g", width).tolist() == expected


def naive_redundancy_ranking(similarity: np.ndarray) -> list[int]:
    kept = list(range(len(similarity)))
    removed = []
    while len(kept) > 1:
        redundancy = [max(similarity[c, o] for o in kept if o != c) for c in kept]
        top = max(redundancy)
        victim = max(c for c, r in zip(kept, redundancy) if r == top)
        kept.remove(victim)
        removed.append(victim)
    return kept + removed[::-1]


@settings(max_examples=40, deadline=None)
@given(channels=st.integers(1, 16), seed=st.integers(0, 10_000))
def test_redundancy_ranking_equals_the_naive_greedy_definition(channels, seed):
    rng = np.random.default_rng(seed)
    # Few distinct values -> many exact ties, which the tie rule must resolve like the naive version.
    similarity = rng.integers(-3, 4, size=(channels, channels)) / 4.0
    similarity = np.triu(similarity) + np.triu(similarity, 1).T
    np.fill_diagonal(similarity, 1.0)
    ranking = redundancy_ranking(similarity, np.zeros(channels, dtype=bool))
    assert ranking.tolist() == naive_redundancy_ranking(similarity)


def test_redundancy_prunes_the_duplicate_then_no_longer_its_original():
    basis = np.eye(6)[:5] * 1.0
    descriptors = np.vstack([basis, basis[2]])  # channel 5 duplicates channel 2
    descriptors[4] = 0.6 * basis[3] + 0.8 * basis[4]  # channel 4 is 0.6-similar to channel 3
    space, stats = one_group(descriptors)
    ranking = make_criterion("redundancy", space, statistics=stats).ranking("g")
    # 5 goes first (similarity 1 to channel 2; the tie with 2 removes the higher index), then 4 (0.6 to
    # channel 3, same tie rule); the rest are mutually orthogonal and leave by index, highest first.
    assert ranking.tolist() == [0, 1, 2, 3, 4, 5]


class ThreeConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, bias=False)
        self.b = nn.Conv2d(3, 6, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(6)
        self.bn_b = nn.BatchNorm2d(6)


def weight_model() -> ThreeConvs:
    torch.manual_seed(0)
    model = ThreeConvs()
    with torch.no_grad():
        model.a.weight.uniform_(0.5, 1.0)
        model.b.weight.uniform_(0.5, 1.0)
    return model


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_weight_norm_criteria_prune_a_zeroed_filter_first(name):
    model = weight_model()
    with torch.no_grad():
        model.a.weight[4] = 0.0
    space = FakeSpace(FakeGroup("a", 6, producers=("a",)))
    assert make_criterion(name, space, model=model).ranking("a")[-1] == 4


@pytest.mark.parametrize(("name", "order"), [("l1", 1), ("l2", 2)])
def test_weight_norms_are_summed_over_coupled_producers(name, order):
    model = weight_model()
    space = FakeSpace(FakeGroup("ab", 6, producers=("a", "b")))
    expected = sum(
        np.linalg.norm(conv.weight.detach().double().reshape(6, -1).numpy(), ord=order, axis=1)
        for conv in (model.a, model.b)
    )
    order_expected = np.lexsort((np.arange(6), -expected))
    assert make_criterion(name, space, model=model).ranking("ab").tolist() == order_expected.tolist()


def test_bn_scale_ranks_by_summed_absolute_gamma():
    model = weight_model()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.tensor([0.5, -3.0, 0.1, 1.0, 0.0, 2.0]))
        model.bn_b.weight.copy_(torch.tensor([0.1, 0.1, 0.1, -1.5, 0.3, 0.0]))
    space = FakeSpace(FakeGroup("ab", 6, producers=("a", "b"), norms=("bn_a", "bn_b")))
    # |gamma| sums: 0.6, 3.1, 0.2, 2.5, 0.3, 2.0
    assert make_criterion("bn_scale", space, model=model).ranking("ab").tolist() == [1, 3, 5, 0, 4, 2]


def test_bn_scale_without_batchnorm_falls_back_to_l1():
    model = weight_model()
    space = FakeSpace(FakeGroup("a", 6, producers=("a",)))
    bn_ranking = make_criterion("bn_scale", space, model=model).ranking("a")
    assert bn_ranking.tolist() == make_criterion("l1", space, model=model).ranking("a").tolist()


def test_hrank_keeps_high_rank_channels_with_stable_ties():
    descriptors = np.eye(5)
    space, stats = one_group(descriptors, hrank={"g": np.array([3.0, 7.5, 3.0, 1.0, 7.5])})
    assert make_criterion("hrank", space, statistics=stats).ranking("g").tolist() == [1, 4, 0, 2, 3]


def test_fisher_scores_exact_values():
    labels = np.array([0, 0, 1, 1])
    responses = np.array(
        [[0.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.2, 5.0], [1.0, 0.0, 1.0, 5.0], [1.0, 1.0, 1.2, 5.0]]
    )
    scores = fisher_scores(responses, labels)
    assert scores[0] == np.inf  # separates the classes perfectly
    assert scores[1] == 0.0  # no difference between class means
    assert scores[2] == pytest.approx(1.0 / 0.04)
    assert scores[3] == 0.0  # constant response


def test_task_ranks_by_fisher_score_with_labels_and_by_foreground_share_with_masks():
    space = FakeSpace(FakeGroup("g", 3))
    stats = statistics({"g": np.eye(3)}, labels=np.array([0, 0, 1, 1]))
    stats.groups["g"].mean_response[:] = np.array([[0, 0, 7], [0, 1, 7], [1, 0, 7], [1, 1, 7]])
    assert make_criterion("task", space, statistics=stats).ranking("g").tolist() == [0, 1, 2]
    masked = statistics({"g": np.eye(3)}, foreground_share={"g": np.array([0.2, 0.9, 0.5])})
    assert make_criterion("task", space, statistics=masked).ranking("g").tolist() == [1, 2, 0]


def test_task_without_labels_or_masks_is_a_user_error():
    space, stats = one_group(np.eye(3))
    with pytest.raises(UserError, match="needs labels"):
        make_criterion("task", space, statistics=stats).ranking("g")


def test_random_is_seeded_and_independent_of_group_order():
    groups = (FakeGroup("x", 40), FakeGroup("y", 40))
    first = make_criterion("random", FakeSpace(*groups), seed=3)
    again = make_criterion("random", FakeSpace(*reversed(groups)), seed=3)
    other = make_criterion("random", FakeSpace(*groups), seed=4)
    assert first.ranking("x").tolist() == again.ranking("x").tolist()
    assert first.ranking("x").tolist() != other.ranking("x").tolist()
    assert first.ranking("x").tolist() != first.ranking("y").tolist()


def all_criteria(channels: int = 6):
    rng = np.random.default_rng(5)
    model = weight_model()
    space = FakeSpace(FakeGroup("a", channels, producers=("a",), norms=("bn_a",)))
    stats = statistics(
        {"a": rng.normal(size=(channels, 10))},
        hrank={"a": rng.integers(0, 4, size=channels).astype(float)},
        labels=np.array([0, 1, 0, 1]),
    )
    stats.groups["a"].mean_response[:] = rng.normal(size=(4, channels))
    # box_relevance refuses statistics without box masks (tests/propose/test_detection_features.py)
    share = rng.uniform(size=channels)
    boxed = replace(stats, has_masks=True, groups={"a": replace(stats.groups["a"], foreground_share=share)})
    return {
        name: make_criterion(name, space, model=model, statistics=boxed if name == "box_relevance" else stats)
        for name in CRITERIA
    }


def test_every_criterion_selects_sorted_nested_indices_of_the_right_length():
    for name, criterion in all_criteria().items():
        previous: set[int] = set()
        for width in range(1, 7):
            selected = criterion.select("a", width)
            assert selected.dtype == np.int64, name
            assert selected.tolist() == sorted(set(selected.tolist())) and len(selected) == width, name
            assert previous <= set(selected.tolist()), name
            previous = set(selected.tolist())
        with pytest.raises(ValueError):
            criterion.ranking("a")[0] = 1  # cached rankings are read-only


def test_keep_accepts_a_mapping_or_widths_in_space_order():
    criterion = all_criteria()["l1"]
    assert criterion.keep({"a": 2}) == criterion.keep([2]) == {"a": tuple(criterion.select("a", 2).tolist())}
    with pytest.raises(UserError, match="2 widths for 1 groups"):
        criterion.keep([2, 3])


def test_unknown_criterion_names_close_matches():
    with pytest.raises(UserError, match=r"unknown criterion 'l3'; did you mean l2, l1\?"):
        make_criterion("l3", FakeSpace())


def test_missing_inputs_and_bad_widths_are_user_errors():
    space, stats = one_group(np.eye(4))
    with pytest.raises(UserError, match="criterion 'cluster' needs feature statistics"):
        make_criterion("cluster", space)
    with pytest.raises(UserError, match="criterion 'l1' needs the model's weights"):
        make_criterion("l1", space)
    criterion = make_criterion("cluster", space, statistics=stats)
    with pytest.raises(UserError, match=r"group 'g': width 5 out of range 1..4"):
        criterion.select("g", 5)
    with pytest.raises(UserError, match="unknown group 'h'"):
        criterion.select("h", 1)
    with pytest.raises(UserError, match="criterion 'hrank' needs statistics collected with hrank_images > 0"):
        make_criterion("hrank", space, statistics=stats).ranking("g")
