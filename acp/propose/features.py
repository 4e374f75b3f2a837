"""Per-channel feature statistics of every channel group, collected with forward hooks on calibration images.

What is hooked: for each group, its BatchNorm layers (``group.norms``) -- the maps *after* BN, before the
activation -- or, for a group without BN, its producer layers. A group of coupled layers (a residual stage,
a depthwise pair) has several such members; a channel's statistics combine all of them.

Memory is bounded by the model, not by the number of images: batches are streamed and each group keeps
- ``gram``: the running Gram matrix (C x C, float64) of channel descriptors. A channel's descriptor is the
  concatenation, over images and member layers, of its map average-pooled to ``pool_size x pool_size``
  (maps smaller than that are kept as they are); the map is the BN output (``descriptor="bn"``, default,
  as in ACP) or its ReLU (``descriptor="relu"``; on the shared ResNet-20 it selected slightly worse
  channels at 50% MACs, see benchmarks/RESULTS.md). Cosine similarities / distances between descriptors --
  all the clustering needs -- follow from it exactly, so the raw activations are never stored.
- ``mean_response``: per image, the spatial mean of the ReLU of each channel's map, averaged over member
  layers (N x C, float32) -- the pooled response the ``task`` criterion scores against labels.
- ``hrank``: the average matrix rank of each channel's ReLU'd map (HRank, CVPR 2020) over the first
  ``hrank_images`` images (default 32; HRank's own ranks are stable from a few batches on) and all member
  layers (None when ``hrank_images == 0``). For residual groups the ReLU is applied to each member's BN
  output, not after the residual addition. See :func:`map_ranks` for the tolerance.
- ``foreground_share``: with object masks, inside-object mean response / (inside + outside) per channel.

Collection runs the model in eval mode under ``torch.no_grad`` and restores its mode afterwards.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acp.errors import UserError
from acp.settings import ProposeSettings

log = logging.getLogger(__name__)

DEFAULT_NUM_IMAGES = ProposeSettings().images
DEFAULT_POOL_SIZE = 4
DEFAULT_HRANK_IMAGES = 32
DESCRIPTORS = ("bn", "relu")
# A channel whose descriptor norm is this small relative to the group's largest is "dead": its cosine
# similarity to anything is undefined, so it is handled explicitly (see GroupStatistics.dead).
DEAD_RELATIVE_NORM = 1e-6


@dataclass
class GroupStatistics:
    """Statistics of one channel group (index c == group channel c everywhere)."""

    group_id: str
    members: tuple[str, ...]
    gram: np.ndarray  # (C, C) float64
    mean_response: np.ndarray  # (N, C) float32
    hrank: np.ndarray | None = None  # (C,) float64
    foreground_share: np.ndarray | None = None  # (C,) float64
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def width(self) -> int:
        return int(self.gram.shape[0])

    def cached(self, key: str, compute):
        """Memoize a derived quantity (dendrogram, similarity matrix) on this object."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def descriptor_norms(self) -> np.ndarray:
        """L2 norm of each channel's descriptor (its pooled feature maps over all images and members)."""
        return self.cached("norms", lambda: np.sqrt(np.clip(np.diag(self.gram), 0.0, None)))

    def dead(self) -> np.ndarray:
        """Boolean mask of channels whose maps are (numerically) all zero."""

        def compute() -> np.ndarray:
            norms = self.descriptor_norms()
            largest = float(norms.max(initial=0.0))
            if largest == 0.0:
                return np.ones(self.width, dtype=bool)
            return norms <= DEAD_RELATIVE_NORM * largest

        return self.cached("dead", compute)

    def cosine_similarity(self) -> np.ndarray:
        """(C, C) cosine similarity of descriptors; dead channels: 1 with each other, 0 with live ones."""

        def compute() -> np.ndarray:
            norms = self.descriptor_norms()
            dead = self.dead()
            safe = np.where(dead, 1.0, norms)
            similarity = self.gram / np.outer(safe, safe)
            similarity = np.clip((similarity + similarity.T) / 2.0, -1.0, 1.0)
            similarity[dead, :] = 0.0
            similarity[:, dead] = 0.0
            similarity[np.ix_(dead, dead)] = 1.0
            np.fill_diagonal(similarity, 1.0)
            similarity.setflags(write=False)
            return similarity

        return self.cached("cosine", compute)


@dataclass
class FeatureStatistics:
    """Statistics of all groups of a ChannelSpace on the same calibration images."""

    groups: dict[str, GroupStatistics]
    num_images: int
    pool_size: int
    hrank_images: int
    descriptor: str = "bn"
    labels: np.ndarray | None = None  # (N,) int64 when labels were given
    has_masks: bool = False

    def group(self, group_id: str) -> GroupStatistics:
        try:
            return self.groups[group_id]
        except KeyError:
            close = difflib.get_close_matches(group_id, list(self.groups), n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise UserError(
                f"feature statistics have no group {group_id!r}{hint} (collected for a different space?)"
            ) from None


def collect_statistics(
    model: nn.Module,
    space: Any,
    images: torch.Tensor | Iterable,
    *,
    labels: torch.Tensor | np.ndarray | None = None,
    masks: torch.Tensor | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    batch_size: int = 64,
    pool_size: int = DEFAULT_POOL_SIZE,
    hrank_images: int = DEFAULT_HRANK_IMAGES,
    descriptor: str = "bn",
) -> FeatureStatistics:
    """Run ``model`` on up to ``num_images`` calibration images and collect every group's statistics.

    ``images`` is a normalized float tensor ``(N, C, H, W)`` (with optional ``labels (N,)`` and
    ``masks (N, H, W)``, nonzero = object), or an iterable of batches, each a tensor or a tuple
    ``(images, labels)`` / ``(images, labels, masks)``; labels may be None inside a tuple.
    ``space`` is a ChannelSpace (only ``space.groups`` with ``id``/``full_width``/``norms``/``producers``
    is used). Deterministic for the same images, batch size and thread count.
    """
    _validate_settings(num_images, batch_size, pool_size, hrank_images)
    if descriptor not in DESCRIPTORS:
        raise UserError(
            f"feature statistics: descriptor must be one of {', '.join(DESCRIPTORS)}, got {descriptor!r}"
        )
    modules = dict(model.named_modules())
    collector = _Collector(
        space.groups, modules, pool_size=pool_size, hrank_images=hrank_images, relu=descriptor == "relu"
    )
    was_training = model.training
    handles = [modules[name].register_forward_hook(collector.hook(name)) for name in collector.hooked]
    try:
        model.eval()
        with torch.no_grad():
            for batch_images, batch_labels, batch_masks in _batches(images, labels, masks, batch_size):
                remaining = num_images - collector.seen
                if remaining <= 0:
                    break
                batch_images = batch_images[:remaining]
                collector.begin_batch(
                    len(batch_images),
                    None if batch_labels is None else batch_labels[:remaining],
                    None if batch_masks is None else batch_masks[:remaining],
                )
                model(batch_images.float())
                collector.end_batch()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if collector.seen == 0:
        raise UserError("feature statistics: no calibration images were given")
    return collector.finish(pool_size=pool_size, descriptor=descriptor)


def _validate_settings(num_images: int, batch_size: int, pool_size: int, hrank_images: int) -> None:
    for name, value, low in (
        ("num_images", num_images, 1),
        ("batch_size", batch_size, 1),
        ("pool_size", pool_size, 1),
        ("hrank_images", hrank_images, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"feature statistics: {name} must be an integer >= {low}, got {value!r}")


def _batches(images, labels, masks, batch_size: int) -> Iterator[tuple[torch.Tensor, Any, Any]]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise UserError(
                f"feature statistics: images must be (N, C, H, W), got shape {tuple(images.shape)}"
            )
        labels = None if labels is None else torch.as_tensor(np.asarray(labels)).reshape(-1)
        for name, extra in (("labels", labels), ("masks", masks)):
            if extra is not None and len(extra) != len(images):
                raise UserError(f"feature statistics: {len(extra)} {name} for {len(images)} images")
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            yield (
                images[start:stop],
                None if labels is None else labels[start:stop],
                None if masks is None else masks[start:stop],
            )
        return
    if labels is not None or masks is not None:
        raise UserError("feature statistics: pass labels/masks inside the batches when images is an iterable")
    for batch in images:
        if isinstance(batch, torch.Tensor):
            yield batch, None, None
        else:
            parts = tuple(batch)
            yield parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None


def map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Matrix rank of every H x W map in ``maps (..., H, W)``, with ``torch.linalg.matrix_rank``'s default
    float32 tolerance (``max(H, W) * eps32 * largest singular value``).

    Singular values come from the eigenvalues of the float64 Gram matrix of each map, which is several
    times faster than batched SVD on large maps (112 x 112: ~15x) and, in float64, resolves singular
    values far below that tolerance, so the ranks agree with ``matrix_rank`` on float32 input.
    """
    height, width = maps.shape[-2:]
    maps = maps.double()
    gram = maps @ maps.transpose(-1, -2) if height <= width else maps.transpose(-1, -2) @ maps
    singular = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()
    tolerance = singular.amax(dim=-1, keepdim=True) * max(height, width) * torch.finfo(torch.float32).eps
    return (singular > tolerance).sum(dim=-1)


class _GroupAccumulator:
    def __init__(self, group, members: tuple[str, ...]):
        self.group_id = group.id
        self.width = int(group.full_width)
        self.members = members
        self.gram = np.zeros((self.width, self.width), dtype=np.float64)
        self.responses: list[np.ndarray] = []
        self.batch_response = np.zeros(0)
        self.rank_sum = np.zeros(self.width, dtype=np.float64)
        self.rank_count = 0
        self.inside = np.zeros(self.width, dtype=np.float64)
        self.inside_area = 0.0
        self.outside = np.zeros(self.width, dtype=np.float64)
        self.outside_area = 0.0


class _Collector:
    """Owns the per-group accumulators; one forward hook per hooked module feeds them."""

    def __init__(
        self, groups, modules: dict[str, nn.Module], *, pool_size: int, hrank_images: int, relu: bool
    ):
        self.relu = relu
        self.pool_size = pool_size
        self.hrank_images = hrank_images
        self.accumulators: list[_GroupAccumulator] = []
        self.by_module: dict[str, list[_GroupAccumulator]] = {}
        for group in groups:
            members = tuple(group.norms) if group.norms else tuple(group.producers)
            if not members:
                raise UserError(
                    f"feature statistics: group {group.id!r} has neither BatchNorm nor producer layers"
                )
            for name in members:
                if name not in modules:
                    raise UserError(
                        f"feature statistics: group {group.id!r} names module {name!r}, which the model lacks"
                    )
            accumulator = _GroupAccumulator(group, members)
            self.accumulators.append(accumulator)
            for name in members:
                self.by_module.setdefault(name, []).append(accumulator)
        self.hooked = list(self.by_module)
        self.seen = 0
        self.batch_size = 0
        self.labels: list[np.ndarray] = []
        self.has_labels: bool | None = None
        self.has_masks: bool | None = None
        self.batch_masks: torch.Tensor | None = None

    def begin_batch(self, size: int, labels, masks) -> None:
        for name, value, flag in (("labels", labels, self.has_labels), ("masks", masks, self.has_masks)):
            if flag is not None and flag != (value is not None):
                raise UserError(f"feature statistics: some batches have {name} and others do not")
        self.has_labels = labels is not None
        self.has_masks = masks is not None
        if labels is not None:
            self.labels.append(np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1))
        self.batch_masks = None if masks is None else torch.as_tensor(masks).float().cpu()
        self.batch_size = size
        for accumulator in self.accumulators:
            accumulator.batch_response = np.zeros((size, accumulator.width), dtype=np.float64)

    def end_batch(self) -> None:
        for accumulator in self.accumulators:
            accumulator.responses.append(
                (accumulator.batch_response / len(accumulator.members)).astype(np.float32)
            )
        self.seen += self.batch_size

    def hook(self, name: str):
        def record(_module: nn.Module, _inputs, output) -> None:
            self._record(name, output)

        return record

    def _record(self, name: str, output: torch.Tensor) -> None:
        maps = output.detach().float().cpu()
        if maps.dim() == 2:
            maps = maps[:, :, None, None]
        for accumulator in self.by_module[name]:
            if maps.dim() != 4 or maps.shape[1] != accumulator.width:
                raise ValueError(
                    f"group {accumulator.group_id!r}: {name} produced shape {tuple(output.shape)}, "
                    f"expected {accumulator.width} channels"
                )
            self._accumulate(accumulator, maps)

    def _accumulate(self, accumulator: _GroupAccumulator, maps: torch.Tensor) -> None:
        batch, channels, height, width = maps.shape
        activated = torch.relu(maps)
        described = activated if self.relu else maps
        pooled = F.adaptive_avg_pool2d(described, (min(self.pool_size, height), min(self.pool_size, width)))
        descriptors = pooled.permute(1, 0, 2, 3).reshape(channels, -1)
        accumulator.gram += (descriptors @ descriptors.T).double().numpy()
        accumulator.batch_response += activated.mean(dim=(2, 3)).double().numpy()
        ranked = min(batch, self.hrank_images - self.seen)
        if ranked > 0:
            ranks = map_ranks(activated[:ranked])  # (ranked, C)
            accumulator.rank_sum += ranks.sum(dim=0).double().numpy()
            accumulator.rank_count += ranked
        if self.batch_masks is not None:
            # Area interpolation gives each map cell the fraction of its pixels that lie on an object.
            inside = F.interpolate(self.batch_masks[:, None].ne(0).float(), size=(height, width), mode="area")
            outside = 1.0 - inside
            accumulator.inside += (activated * inside).sum(dim=(0, 2, 3)).double().numpy()
            accumulator.outside += (activated * outside).sum(dim=(0, 2, 3)).double().numpy()
            accumulator.inside_area += float(inside.sum())
            accumulator.outside_area += float(outside.sum())

    def finish(self, *, pool_size: int, descriptor: str) -> FeatureStatistics:
        groups = {}
        for accumulator in self.accumulators:
            hrank = None
            if accumulator.rank_count:
                hrank = accumulator.rank_sum / accumulator.rank_count
            share = None
            if self.has_masks:
                inside_mean = accumulator.inside / max(accumulator.inside_area, 1e-12)
                outside_mean = accumulator.outside / max(accumulator.outside_area, 1e-12)
                total = inside_mean + outside_mean
                share = np.divide(inside_mean, total, out=np.zeros_like(total), where=total > 0)
            groups[accumulator.group_id] = GroupStatistics(
                group_id=accumulator.group_id,
                members=accumulator.members,
                gram=accumulator.gram,
                mean_response=np.concatenate(accumulator.responses, axis=0),
                hrank=hrank,
                foreground_share=share,
            )
        labels = np.concatenate(self.labels) if self.has_labels else None
        return FeatureStatistics(
            groups=groups,
            num_images=self.seen,
            pool_size=pool_size,
            hrank_images=min(self.hrank_images, self.seen),
            descriptor=descriptor,
            labels=labels,
            has_masks=bool(self.has_masks),
        )
