"""Feature statistics (acp.propose.features) and clustering proposals (acp.propose.clustering)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acp.errors import UserError
from acp.propose.clustering import group_dendrogram, propose_widths
from acp.propose.features import FeatureStatistics, GroupStatistics, collect_statistics, map_ranks


@dataclass(frozen=True)
class FakeGroup:
    id: str
    full_width: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    min_width: int = 1
    round_to: int = 1

    @property
    def max_width(self) -> int:
        return self.full_width

    def allowed_widths(self) -> np.ndarray:
        widths = {w for w in range(self.min_width, self.full_width + 1) if w % self.round_to == 0}
        return np.array(sorted(widths | {self.full_width}), dtype=np.int64)


class TwoConv(nn.Module):
    """conv1-bn1-relu-conv2-bn2-relu-avgpool-fc on 8x8 inputs."""

    def __init__(self, widths=(8, 8)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[1])
        self.fc = nn.Linear(widths[1], 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class FakeSpace:
    """The two groups of TwoConv at 8x8 with its exact MAC/param counts."""

    def __init__(self, widths=(8, 8), min_width=1, round_to=1, groups=None):
        self.groups = groups or (
            FakeGroup("conv1", widths[0], ("conv1",), ("bn1",), min_width, round_to),
            FakeGroup("conv2", widths[1], ("conv2",), ("bn2",), min_width, round_to),
        )
        if len(self.groups) == 2:
            self.base_macs, self.base_params = self.cost(self.full_widths())

    def full_widths(self) -> np.ndarray:
        return np.array([group.full_width for group in self.groups], dtype=np.int64)

    def cost(self, widths):
        widths = np.asarray(widths, dtype=np.int64)
        first, second = widths[..., 0], widths[..., 1]
        macs = 27 * first * 64 + 9 * first * second * 64 + 10 * second
        params = 29 * first + 9 * first * second + 12 * second + 10
        return (int(macs), int(params)) if widths.ndim == 1 else (macs, params)

    def snap(self, widths):
        widths = np.asarray(widths, dtype=np.int64)
        snapped = np.empty_like(widths)
        for index, group in enumerate(self.groups):
            allowed = group.allowed_widths()
            column = widths[..., index].reshape(-1, 1)
            snapped[..., index] = allowed[np.abs(allowed[None, :] - column).argmin(axis=1)].reshape(
                widths[..., index].shape
            )
        return snapped


def seeded_model(seed: int = 0) -> TwoConv:
    torch.manual_seed(seed)
    model = TwoConv()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


def images(count: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def expected_gram(maps: torch.Tensor, pool: int) -> np.ndarray:
    pooled = F.adaptive_avg_pool2d(maps.double(), pool)
    rows = pooled.permute(1, 0, 2, 3).reshape(maps.shape[1], -1)
    return (rows @ rows.T).numpy()


def bn1_maps(model: TwoConv, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.bn1(model.conv1(x))


# ---- feature statistics ----------------------------------------------------------------------------


def test_gram_responses_and_labels_match_a_direct_computation_whatever_the_batch_size():
    model, x = seeded_model(), images(20)
    labels = torch.arange(20) % 3
    streamed = collect_statistics(model, FakeSpace(), x, labels=labels, batch_size=3, pool_size=4)
    single = collect_statistics(model, FakeSpace(), x, labels=labels, batch_size=64, pool_size=4)
    maps = bn1_maps(model, x)
    for stats in (streamed, single):
        conv1 = stats.group("conv1")
        np.testing.assert_allclose(conv1.gram, expected_gram(maps, 4), rtol=1e-5)
        np.testing.assert_allclose(conv1.mean_response, torch.relu(maps).mean((2, 3)).numpy(), rtol=1e-5)
        assert conv1.members == ("bn1",)
        assert stats.labels.tolist() == labels.tolist()
        assert stats.num_images == 20
    np.testing.assert_allclose(streamed.group("conv2").gram, single.group("conv2").gram, rtol=1e-5)
    relu = collect_statistics(model, FakeSpace(), x, descriptor="relu", pool_size=2)
    np.testing.assert_allclose(relu.group("conv1").gram, expected_gram(torch.relu(maps), 2), rtol=1e-5)
    assert (streamed.descriptor, relu.descriptor) == ("bn", "relu")


def test_num_images_caps_the_stream_and_batches_may_be_an_iterable():
    model, x = seeded_model(), images(10)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.ones(6))]
    stats = collect_statistics(model, FakeSpace(), batches, num_images=7, pool_size=2)
    assert stats.num_images == 7
    assert stats.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert stats.group("conv1").mean_response.shape == (7, 8)
    np.testing.assert_allclose(stats.group("conv1").gram, expected_gram(bn1_maps(model, x[:7]), 2), rtol=1e-5)


def test_coupled_members_add_up_and_a_module_may_feed_several_groups():
    model, x = seeded_model(), images(12)
    groups = (
        FakeGroup("first", 8, ("conv1",), ("bn1",)),
        FakeGroup("second", 8, ("conv2",), ("bn2",)),
        FakeGroup("both", 8, ("conv1", "conv2"), ("bn1", "bn2")),
    )
    stats = collect_statistics(model, FakeSpace(groups=groups), x)
    both = stats.group("both")
    assert both.members == ("bn1", "bn2")
    np.testing.assert_allclose(both.gram, stats.group("first").gram + stats.group("second").gram, rtol=1e-6)
    average = (stats.group("first").mean_response + stats.group("second").mean_response) / 2
    np.testing.assert_allclose(both.mean_response, average, rtol=1e-6)


def test_hrank_dead_channels_and_model_state():
    model, x = seeded_model(), images(9)
    with torch.no_grad():
        model.conv1.weight[2] = 0.0  # map = constant BN shift ...
        model.bn1.bias[2] = 1.0  # ... made positive: rank 1 after ReLU
        model.bn1.weight[6] = 0.0
        model.bn1.bias[6] = 0.0  # all-zero map: dead, rank 0
    model.train()
    stats = collect_statistics(model, FakeSpace(), x, hrank_images=5, batch_size=4)
    conv1 = stats.group("conv1")
    assert stats.hrank_images == 5
    assert conv1.hrank[2] == 1.0 and conv1.hrank[6] == 0.0
    assert all(conv1.hrank[c] > 1.0 for c in (0, 1, 3, 4, 5, 7))
    assert conv1.dead().tolist() == [c == 6 for c in range(8)]
    assert model.training and not model.bn1._forward_hooks and not model.conv1._forward_hooks
    assert collect_statistics(model, FakeSpace(), x, hrank_images=0).group("conv1").hrank is None


def test_masks_give_the_foreground_share_of_each_channel():
    model, x = seeded_model(), images(6)
    masks = torch.zeros(6, 8, 8)
    masks[:, :, :4] = 1.0  # the left half of every image is "object"
    stats = collect_statistics(model, FakeSpace(), x, masks=masks)
    activated = torch.relu(bn1_maps(model, x)).double()
    inside, outside = activated[..., :4].mean((0, 2, 3)), activated[..., 4:].mean((0, 2, 3))
    expected = (inside / (inside + outside)).numpy()
    np.testing.assert_allclose(stats.group("conv1").foreground_share, expected, rtol=1e-6)
    assert stats.has_masks


def test_collection_errors_name_the_problem():
    model = seeded_model()
    with pytest.raises(UserError, match=r"images must be \(N, C, H, W\), got shape \(3, 8, 8\)"):
        collect_statistics(model, FakeSpace(), torch.zeros(3, 8, 8))
    with pytest.raises(UserError, match="3 labels for 4 images"):
        collect_statistics(model, FakeSpace(), images(4), labels=[0, 1, 2])
    with pytest.raises(UserError, match="descriptor must be one of bn, relu, got 'raw'"):
        collect_statistics(model, FakeSpace(), images(4), descriptor="raw")
    with pytest.raises(UserError, match="num_images must be an integer >= 1, got 0"):
        collect_statistics(model, FakeSpace(), images(4), num_images=0)
    with pytest.raises(UserError, match="group 'conv1' names module 'bn9', which the model lacks"):
        collect_statistics(model, FakeSpace(groups=(FakeGroup("conv1", 8, ("conv1",), ("bn9",)),)), images(4))
    with pytest.raises(UserError, match="no group 'conv3'; close matches: conv2, conv1"):
        collect_statistics(model, FakeSpace(), images(2)).group("conv3")


# ---- dendrograms and proposals ---------------------------------------------------------------------


def stats_from_descriptors(rows_by_group: dict[str, np.ndarray]) -> FeatureStatistics:
    groups = {
        group_id: GroupStatistics(
            group_id=group_id,
            members=(group_id,),
            gram=np.asarray(rows, float) @ np.asarray(rows, float).T,
            mean_response=np.zeros((1, len(rows)), dtype=np.float32),
        )
        for group_id, rows in rows_by_group.items()
    }
    return FeatureStatistics(groups=groups, num_images=1, pool_size=4, hrank_images=0)


def clustered_rows(centers: int, per_center: int, noise: float, seed: int, outliers: int = 0) -> np.ndarray:
    """Tight bundles of directions around random centers, plus far-apart outliers."""
    rng = np.random.default_rng(seed)
    dims = 64
    center_rows = rng.normal(size=(centers, dims))
    rows = [center + noise * rng.normal(size=dims) for center in center_rows for _ in range(per_center)]
    rows += list(rng.normal(size=(outliers, dims)))
    return np.array(rows)


def test_dendrogram_cluster_counts_follow_the_threshold():
    rows = clustered_rows(centers=3, per_center=4, noise=0.01, seed=0)
    dendrogram = group_dendrogram(stats_from_descriptors({"g": rows}).group("g"))
    assert dendrogram.clusters_at(-1.0) == 12
    assert dendrogram.clusters_at(0.01) == 3  # bundles are much tighter than 0.01 cosine distance
    assert dendrogram.clusters_at(2.0) == 1
    assert sorted(dendrogram.ranking.tolist()) == list(range(12))


def test_dbscan_width_is_clusters_plus_noise():
    rows = {
        "conv1": clustered_rows(centers=1, per_center=6, noise=0.01, seed=1, outliers=2),
        "conv2": clustered_rows(centers=2, per_center=3, noise=0.01, seed=2, outliers=2),
    }
    stats = stats_from_descriptors(rows)
    proposal = propose_widths(stats, FakeSpace(), mode="dbscan", eps=0.05, min_samples=3)
    assert proposal.cluster_counts.tolist() == [1 + 2, 2 + 2]
    assert proposal.widths.tolist() == [3, 4]
    assert (proposal.macs, proposal.params) == FakeSpace().cost([3, 4])
    assert proposal.threshold == 0.05 and proposal.mode == "dbscan"


@pytest.mark.parametrize(("flops", "params", "round_to", "min_width"), [(0.5, None, 1, 1), (0.3, 0.4, 2, 2)])
def test_budget_proposal_meets_the_budget_with_the_least_compression(flops, params, round_to, min_width):
    space = FakeSpace(min_width=min_width, round_to=round_to)
    stats = collect_statistics(seeded_model(), space, images(16))
    proposal = propose_widths(stats, space, flops=flops, params=params)
    assert proposal.macs <= flops * space.base_macs
    assert params is None or proposal.params <= params * space.base_params
    assert (proposal.macs, proposal.params) == space.cost(proposal.widths)
    for group, width in zip(space.groups, proposal.widths):
        assert width in group.allowed_widths()
    # The next smaller merge height (less merging) must break the budget.
    dendrograms = [group_dendrogram(stats.group(group.id)) for group in space.groups]
    heights = np.unique(np.concatenate([d.heights for d in dendrograms]))
    below = heights[heights < proposal.threshold]
    assert len(below) > 0
    counts = [d.clusters_at(below[-1]) for d in dendrograms]
    macs, n_params = space.cost(space.snap(np.clip(counts, min_width, 8)))
    assert macs > flops * space.base_macs or (params is not None and n_params > params * space.base_params)


def test_full_budget_keeps_every_distinct_channel():
    space = FakeSpace()
    proposal = propose_widths(collect_statistics(seeded_model(), space, images(16)), space, flops=1.0)
    assert proposal.widths.tolist() == [8, 8] and proposal.threshold == -1.0


def test_proposal_errors():
    space = FakeSpace(min_width=4)
    stats = collect_statistics(seeded_model(), space, images(4))
    with pytest.raises(UserError, match="budget flops=0.05 is infeasible"):
        propose_widths(stats, space, flops=0.05)
    with pytest.raises(UserError, match="needs a flops and/or params ratio"):
        propose_widths(stats, space)
    with pytest.raises(UserError, match=r"budget flops must be a ratio in \(0, 1\], got 1.5"):
        propose_widths(stats, space, flops=1.5)
    with pytest.raises(UserError, match="cluster mode must be one of budget, dbscan, got 'kmeans'"):
        propose_widths(stats, space, flops=0.5, mode="kmeans")
    with pytest.raises(UserError, match="'dbscan' needs eps > 0"):
        propose_widths(stats, space, mode="dbscan")
    with pytest.raises(UserError, match="takes eps, not a flops/params budget"):
        propose_widths(stats, space, mode="dbscan", eps=0.1, flops=0.5)


def test_summary_lists_every_group_and_the_cost():
    space = FakeSpace()
    proposal = propose_widths(collect_statistics(seeded_model(), space, images(8)), space, flops=0.5)
    lines = proposal.summary_lines()
    assert lines[1].split()[:4] == ["conv1", "8", "->", str(proposal.widths[0])]
    assert f"MACs (FLOPs) {proposal.macs:,} of {space.base_macs:,}" in lines[-1]


def test_map_ranks_agree_with_matrix_rank_on_maps_of_known_rank():
    generator = torch.Generator().manual_seed(3)
    maps = []
    for rank in range(0, 9):
        left = torch.randn(2, 8, rank, generator=generator)
        maps.append(left @ torch.randn(2, rank, 12, generator=generator))
    maps = torch.stack(maps)  # (9, 2, 8, 12)
    expected = torch.arange(9)[:, None].expand(9, 2)
    assert map_ranks(maps).tolist() == expected.tolist()
    assert map_ranks(maps.transpose(-1, -2)).tolist() == expected.tolist()
    assert torch.linalg.matrix_rank(maps).tolist() == expected.tolist()


# ---- real models and spaces ------------------------------------------------------------------------


ALL_CRITERIA = ("cluster", "l1", "l2", "bn_scale", "hrank", "redundancy", "task", "random")


@pytest.mark.parametrize(
    ("name", "size", "criteria"),
    [("resnet20_cifar", 32, ALL_CRITERIA), ("mobilenet_v2", 64, ("cluster", "redundancy", "l1"))],
)
def test_real_space_statistics_proposal_and_criteria_materialize(name, size, criteria):
    """Residual stages (resnet20) and depthwise pairs + linear bottlenecks (mobilenet_v2) end to end."""
    from acp.core.architecture import ModelIdentity
    from acp.propose.clustering import proposal_to_architecture
    from acp.propose.criteria import CRITERIA, make_criterion

    assert set(ALL_CRITERIA) | {"box_relevance"} == set(CRITERIA)  # box masks: test_detection_features.py
    from acp.prune import build_space, materialize, parameter_count

    identity = ModelIdentity.for_model(name, 10, input_size=(3, size, size))
    torch.manual_seed(0)
    model, space = build_space(identity)
    x = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(0))
    stats = collect_statistics(model, space, x, labels=torch.arange(12) % 3, batch_size=6, hrank_images=4)
    for group in space.groups:
        assert stats.group(group.id).width == group.full_width
        assert stats.group(group.id).members == tuple(group.norms)
    proposal = propose_widths(stats, space, flops=0.5)
    assert proposal.macs <= 0.5 * space.base_macs
    assert (proposal.macs, proposal.params) == space.cost(proposal.widths)
    assert proposal.group_ids == tuple(group.id for group in space.groups)
    for criterion_name in criteria:
        criterion = make_criterion(criterion_name, space, model=model, statistics=stats, seed=1)
        arch = proposal_to_architecture(proposal, space, identity, criterion, space_settings={})
        assert arch.widths == proposal.width_map() and arch.macs == proposal.macs
        assert arch.provenance["source"] == "cluster" and arch.provenance["criterion"] == criterion_name
        pruned = materialize(model, arch, space).eval()
        assert parameter_count(pruned) == arch.params
        assert pruned(x[:2]).shape == (2, 10)
