"""The fast proxy evaluator: a width vector -> a score record, the inner loop of the search.

One evaluation (``ProxyEvaluator.evaluate(widths)``):

1. the criterion picks each group's kept channels -> :class:`~acp.core.architecture.Architecture`;
2. :func:`acp.prune.materialize` slices a copy of the base model, inheriting the kept weights;
3. optional ``finetune_steps`` SGD steps on the calibration images (off by default);
4. BatchNorm recalibration (EagleEye's adaptive BN): every BatchNorm's running statistics are reset and
   re-estimated by cumulative averaging (``momentum=None``) over ``calibration_batches`` batches, forward
   only, with the BatchNorms in train mode and every other layer in eval mode (so dropout stays off);
5. accuracy and mean cross-entropy on the proxy-validation images, in eval mode.

Score (higher is better, for maximization):

- ``score="loss"`` (default): ``score = -loss`` (smoother on small slices; it ranks candidates closer to
  their finetuned accuracy than the accuracy does, benchmarks/RESULTS.md);
- ``score="accuracy"``: ``score = (correct + 1 / (1 + loss)) / n`` -- the accuracy, plus a loss-based
  tie-breaker worth less than one image, so a higher accuracy always wins and equal accuracies are
  ordered by lower loss.

A failed evaluation (an exception, or a non-finite loss) is a :class:`Result` with ``score = -inf`` and
``status = "failed: <reason>"``; it never raises. Results are cached per width vector, and an evaluation
is deterministic: the same widths give the same score bit for bit in any process with the same torch
thread count (set ``threads`` to pin it; BatchNorm and convolution reductions depend on the thread split).

Shipping to workers: pickling an evaluator sends the base weights, the space, the criterion's rankings
and the data (as numpy arrays, which ``joblib.Parallel``'s loky backend may memory-map instead of
copying); caches are dropped (a ResNet-20 evaluator with default CIFAR data pickles to ~42 MB in
~0.2 s, mostly images). In a worker process, unpickling an evaluator whose :attr:`ProxyEvaluator.token`
was seen before returns that same object, caches included -- a worker-side singleton. With Dask,
``client.scatter(evaluator, broadcast=True)`` (or joblib's ``parallel_config(backend="dask",
scatter=[evaluator])``) sends it once per worker; with loky, the evaluator travels with each batch of
tasks (send batches, not single candidates) and the singleton keeps the per-worker copy and its cache.
See :func:`evaluate_widths` for a task function.

Tasks: :class:`ProxyEvaluator` scores classifiers; :class:`acp.proxy.detection.DetectionProxyEvaluator`
scores torchvision detectors by the same steps. Both are :class:`BaseProxyEvaluator` -- the caching, the
kept channels, Architectures, failures, the token and the shipping above are shared; a task supplies its
data type, its calibration batches, its training loss (finetune steps) and its score.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acp.core.architecture import Architecture, ModelIdentity
from acp.errors import UserError, one_line
from acp.proxy.data import ProxyData
from acp.proxy.memory import release_freed_memory
from acp.prune import materialize
from acp.settings import ProxySettings
from acp.threads import torch_threads

log = logging.getLogger(__name__)

SCORES = ProxySettings.TASK_SCORES["classification"]
FAILED_SCORE = float("-inf")
WORKER_REGISTRY_SIZE = 4  # evaluators kept alive per worker process (one per concurrent search is plenty)


@dataclass(frozen=True)
class Result:
    """One evaluation. ``score`` is maximized; a failed evaluation has ``score == -inf``."""

    widths: tuple[int, ...]
    score: float
    accuracy: float  # classification: the accuracy; detection: see acp.proxy.detection; nan when failed
    loss: float  # classification: mean cross-entropy; detection: see acp.proxy.detection; nan when failed
    macs: int | None  # None when the widths were not even valid
    params: int | None
    seconds: float  # wall time of the evaluation that produced it (also on cache hits)
    status: str  # "ok" or "failed: <reason>"
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        record = asdict(self)
        record["widths"] = list(self.widths)
        return record


class NonFiniteScore(ArithmeticError):
    """The pruned network produced a NaN/inf loss."""


# --- the steps of one evaluation, usable on their own ---------------------------------------------


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any]) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches``; returns the number of layers.

    A batch is whatever ``model`` takes: an image tensor ``(N, C, H, W)`` for a classifier, a list of
    ``(C, H, W)`` images for a torchvision detector (whose eval-mode forward -- transform, network, box
    decoding -- then runs with only its BatchNorms in train mode; FrozenBatchNorm2d has no statistics to
    re-estimate). Statistics are reset, then accumulated as the plain average over batches of each batch's
    mean and unbiased variance (``momentum=None``). Only the BatchNorms run in train mode; the model ends
    in eval mode with the original momenta.
    """
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    model.eval()
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.inference_mode():
            for batch in batches:
                model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return len(norms)


def score_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[int, float]:
    """(correct predictions, mean cross-entropy) of ``model`` in eval mode; NonFiniteScore on NaN/inf."""
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size]).float()
            batch_labels = labels[start : start + batch_size]
            loss_sum += float(F.cross_entropy(logits, batch_labels, reduction="sum"))
            correct += int((logits.argmax(1) == batch_labels).sum())
    loss = loss_sum / len(images)
    if not math.isfinite(loss):
        raise NonFiniteScore(f"non-finite validation loss ({loss})")
    return correct, loss


def combined_score(correct: int, loss: float, count: int, kind: str) -> float:
    """The documented score formula (module docstring)."""
    if kind == "loss":
        return -loss
    return (correct + 1.0 / (1.0 + loss)) / count


# --- the evaluator -----------------------------------------------------------------------------------


class BaseProxyEvaluator:
    """Scores width vectors of ``space`` by the recipe in the module docstring, for one task.

    ``criterion`` chooses the kept channels: anything with ``select(group_id, width) -> sorted indices``;
    if it also has ``ranking(group_id)`` (acp's criteria do), the rankings are read once here and the
    criterion object itself is not kept. ``identity`` names the model in the Architectures it builds
    (default: a placeholder ``"<in-memory>"`` -- pass the real one to save ``architecture(...)`` results).
    The base model is copied; later changes to the caller's model do not affect scores.

    A task subclass sets :attr:`TASK` (the scores :meth:`ProxySettings.require_task` allows) and
    :attr:`DATA` (its data type, rebuilt from ``__getstate__`` in workers), and implements
    :meth:`_check_inputs`, :meth:`_calibration`, :meth:`_training_loss` and :meth:`_score`.
    """

    TASK: ClassVar[str]
    DATA: ClassVar[type]

    def __init__(
        self,
        base_model: nn.Module,
        space,
        criterion,
        data,
        settings: ProxySettings | None = None,
        *,
        identity: ModelIdentity | None = None,
    ):
        settings = ProxySettings() if settings is None else settings
        if not isinstance(settings, ProxySettings):
            raise UserError(f"proxy settings: expected ProxySettings, got {type(settings).__name__}")
        settings.require_task(self.TASK)
        if not isinstance(data, self.DATA):
            raise UserError(f"proxy data: expected {self.DATA.__name__}, got {type(data).__name__}")
        if not isinstance(base_model, nn.Module):
            raise UserError(f"base_model: expected a torch.nn.Module, got {type(base_model).__name__}")
        if not hasattr(criterion, "select"):
            raise UserError(f"criterion: expected an object with select(group_id, width), got {criterion!r}")
        self._check_inputs(base_model, space, data, settings)
        self.settings = settings
        self.space = space
        self.data = data
        self.identity = identity or ModelIdentity("<in-memory>", None, tuple(space.input_shape[1:]), {})
        self.criterion_name = str(getattr(criterion, "name", type(criterion).__name__))
        self._base = copy.deepcopy(base_model).eval()
        if hasattr(criterion, "ranking"):
            self._rankings: dict[str, np.ndarray] | None = {
                group.id: np.asarray(criterion.ranking(group.id), dtype=np.int64) for group in space.groups
            }
            self._criterion = None
        else:
            self._rankings, self._criterion = None, criterion
        self.token = self._compute_token()
        self._reset_runtime_state()

    def _reset_runtime_state(self) -> None:
        """Caches and counters (dropped when pickled); a task adds its lazily built inputs."""
        self._cache: OrderedDict[tuple[int, ...], Result] = OrderedDict()
        self.evaluations = 0  # evaluations actually run (cache misses)
        self.cache_hits = 0

    # --- the task's part ---------------------------------------------------------------------------

    def _check_inputs(self, base_model: nn.Module, space, data, settings: ProxySettings) -> None:
        """UserError when ``data`` cannot serve ``settings`` or does not fit the model or ``space``."""
        raise NotImplementedError

    def _calibration(self) -> tuple[list, list]:
        """(input batches, target batches) of the calibration images: what the model's forward takes
        (BatchNorm recalibration) and what :meth:`_training_loss` takes with them (finetune steps)."""
        raise NotImplementedError

    def _training_loss(self, model: nn.Module, inputs, targets) -> torch.Tensor:
        """The differentiable loss of ``model`` (in train mode) on one calibration batch."""
        raise NotImplementedError

    def _score(self, model: nn.Module) -> tuple[float, float, float]:
        """(score, accuracy, loss) of the prepared ``model`` on the proxy-validation images."""
        raise NotImplementedError

    def _token_parts(self) -> bytes:
        """What else decides a score, beyond the settings, data, space, weights and rankings."""
        return b""

    # --- public API --------------------------------------------------------------------------------

    def evaluate(self, widths) -> Result:
        """Score one width vector (a sequence in space order or a mapping id -> width); never raises
        for a bad candidate: failures come back as ``Result(status="failed: ...", score=-inf)``."""
        try:
            key = self._key(widths)
        except Exception as error:  # not even a width vector: report, do not cache
            return self._failed((), None, None, 0.0, error)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return replace(hit, cached=True)
        result = self._run(key)
        release_freed_memory()  # the candidate's tensors are gone; keep the worker's memory flat
        self.evaluations += 1
        if self.settings.cache_size:
            self._cache[key] = result
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return result

    def keep(self, widths) -> dict[str, tuple[int, ...]]:
        """Kept channel indices per group id for ``widths`` (what the criterion selects)."""
        key = self._key(widths)
        return {group.id: self._select(group.id, width) for group, width in zip(self.space.groups, key)}

    def architecture(
        self,
        widths,
        *,
        budget: Mapping | None = None,
        provenance: Mapping | None = None,
        latency: Mapping | None = None,
    ):
        """The Architecture an evaluation of ``widths`` materializes (for ``best_arch.json``)."""
        key = self._key(widths)
        return Architecture.from_widths(
            self.space,
            self.identity,
            list(key),
            self.keep(key),
            budget=budget,
            space_settings=dict(self.space.settings),
            provenance={"criterion": self.criterion_name, "created": None, **dict(provenance or {})},
            latency=latency,
        )

    def pruned_model(self, widths) -> nn.Module:
        """The materialized candidate, BatchNorm recalibrated (finetuned if set), in eval mode."""
        key = self._key(widths)
        with torch_threads(self.settings.threads):
            return self._prepare(key)

    def describe(self) -> dict:
        """Settings, data description and criterion, for a run directory."""
        return {
            "settings": asdict(self.settings),
            "data": dict(self.data.description),
            "criterion": self.criterion_name,
            "token": self.token,
        }

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    # --- one evaluation ----------------------------------------------------------------------------

    def _run(self, key: tuple[int, ...]) -> Result:
        began = time.perf_counter()
        macs = params = None
        try:
            macs, params = self.space.cost(np.asarray(key, dtype=np.int64))
            with torch_threads(self.settings.threads):
                model = self._prepare(key)
                score, accuracy, loss = self._score(model)
        except Exception as error:
            return self._failed(key, macs, params, time.perf_counter() - began, error)
        return Result(
            widths=key,
            score=score,
            accuracy=accuracy,
            loss=loss,
            macs=int(macs),
            params=int(params),
            seconds=time.perf_counter() - began,
            status="ok",
        )

    def _prepare(self, key: tuple[int, ...]) -> nn.Module:
        architecture = self.architecture(key)
        model = materialize(self._base, architecture, self.space)
        if self.settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        calibration, calibration_targets = self._calibration()
        if self.settings.finetune_steps:
            self._finetune(model, calibration, calibration_targets)
        if self.settings.recalibrate_bn:
            recalibrate_batchnorm(model, calibration)
        return model.eval()

    def _finetune(self, model: nn.Module, inputs: list, targets: list) -> None:
        settings = self.settings
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=settings.finetune_lr,
            momentum=settings.finetune_momentum,
            weight_decay=settings.finetune_weight_decay,
        )
        model.train()
        # dropout & co. draw from torch's global RNG: seed it inside a fork so the caller's state survives
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(settings.finetune_seed)
            for step in range(settings.finetune_steps):
                batch = step % len(inputs)
                loss = self._training_loss(model, inputs[batch], targets[batch])
                if not torch.isfinite(loss):
                    raise NonFiniteScore(f"non-finite loss at finetune step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()

    def _failed(self, key, macs, params, seconds: float, error: Exception) -> Result:
        reason = one_line(f"{type(error).__name__}: {error}")[:500]
        log.warning("proxy evaluation of %s failed: %s", list(key), reason)
        return Result(
            widths=tuple(key),
            score=FAILED_SCORE,
            accuracy=math.nan,
            loss=math.nan,
            macs=None if macs is None else int(macs),
            params=None if params is None else int(params),
            seconds=seconds,
            status=f"failed: {reason}",
        )

    # --- helpers -----------------------------------------------------------------------------------

    def _key(self, widths) -> tuple[int, ...]:
        matrix, single = self.space.as_matrix(widths)
        if not single:
            raise UserError(f"widths: expected one width vector, got {matrix.shape[0]}")
        return tuple(int(width) for width in matrix[0])

    def _select(self, group_id: str, width: int) -> tuple[int, ...]:
        if self._rankings is not None:
            ranking = self._rankings[group_id]
            if not 1 <= width <= len(ranking):
                raise UserError(f"group {group_id!r}: width {width} out of range 1..{len(ranking)}")
            return tuple(np.sort(ranking[:width]).tolist())
        return tuple(int(index) for index in self._criterion.select(group_id, width))

    def _compute_token(self) -> str:
        digest = hashlib.sha256()
        # validation_images is left out: the data fingerprint covers the slice (and runs made before the
        # field moved into ProxySettings keep their token, so they still resume)
        scoring = {k: v for k, v in asdict(self.settings).items() if k != "validation_images"}
        digest.update(repr(sorted(scoring.items())).encode())
        digest.update(self.data.fingerprint().encode())
        digest.update(repr([(g.id, g.full_width) for g in self.space.groups]).encode())
        for name, tensor in self._base.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        if self._rankings is not None:
            for group_id, ranking in self._rankings.items():
                digest.update(group_id.encode() + ranking.tobytes())
        else:
            digest.update(f"criterion@{id(self._criterion)}".encode())  # opaque: never shared by token
        digest.update(self._token_parts())
        return digest.hexdigest()[:24]

    # --- pickling: ship state once, rebuild lazily -------------------------------------------------

    def __reduce__(self):
        state = {
            "base": self._base,
            "space": self.space,
            "rankings": self._rankings,
            "criterion": self._criterion,
            "criterion_name": self.criterion_name,
            "data": self.data.__getstate__(),
            "settings": self.settings,
            "identity": self.identity,
        }
        return (_restore_evaluator, (self.token, state, type(self)))

    def __deepcopy__(self, memo):
        clone = object.__new__(type(self))
        _install_state(clone, self.token, copy.deepcopy(self.__reduce__()[1][1], memo))
        return clone


class ProxyEvaluator(BaseProxyEvaluator):
    """The classification proxy (module docstring): ``data`` is a :class:`ProxyData` of normalized image
    tensors and labels; ``settings.score`` is ``"loss"`` or ``"accuracy"``."""

    TASK = "classification"
    DATA = ProxyData

    def _check_inputs(self, base_model: nn.Module, space, data: ProxyData, settings: ProxySettings) -> None:
        data.calibration_batches(settings.calibration_batch_size, settings.calibration_batches)  # enough?
        expected = tuple(space.input_shape[1:])
        if tuple(data.validation_images.shape[1:]) != expected:
            raise UserError(
                f"proxy data: images are {tuple(data.validation_images.shape[1:])}, the space was built for "
                f"{expected}"
            )

    def _reset_runtime_state(self) -> None:
        super()._reset_runtime_state()
        self._inputs: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None
        self._validation_cl: torch.Tensor | None = None

    def _calibration(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images, labels, _ = self._batches()
        return images, labels

    def _training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    def _score(self, model: nn.Module) -> tuple[float, float, float]:
        _, _, labels = self._batches()
        images = self._validation_inputs()
        correct, loss = score_model(model, images, labels, self.settings.eval_batch_size)
        count = len(labels)
        return combined_score(correct, loss, count, self.settings.score), correct / count, loss

    def _batches(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Calibration image batches, their label batches, validation labels (built once, lazily)."""
        if self._inputs is None:
            settings = self.settings
            images = self.data.calibration_batches(
                settings.calibration_batch_size, settings.calibration_batches
            )
            size = settings.calibration_batch_size
            labels = [self.data.calibration_labels[i * size : (i + 1) * size] for i in range(len(images))]
            if settings.channels_last:
                images = [batch.contiguous(memory_format=torch.channels_last) for batch in images]
            self._inputs = (images, labels, self.data.validation_labels)
        return self._inputs

    def _validation_inputs(self) -> torch.Tensor:
        if self.settings.channels_last:
            if self._validation_cl is None:
                self._validation_cl = self.data.validation_images.contiguous(
                    memory_format=torch.channels_last
                )
            return self._validation_cl
        return self.data.validation_images


# token -> the evaluator unpickled in this process (a worker-side singleton, module docstring)
_WORKER_EVALUATORS: OrderedDict[str, BaseProxyEvaluator] = OrderedDict()


def _install_state(evaluator: BaseProxyEvaluator, token: str, state: dict) -> None:
    data_type = type(evaluator).DATA
    data = data_type.__new__(data_type)
    data.__setstate__(state["data"])
    evaluator.settings = state["settings"]
    evaluator.space = state["space"]
    evaluator.data = data
    evaluator.identity = state["identity"]
    evaluator.criterion_name = state["criterion_name"]
    evaluator._base = state["base"]
    evaluator._rankings = state["rankings"]
    evaluator._criterion = state["criterion"]
    evaluator.token = token
    evaluator._reset_runtime_state()


def _restore_evaluator(token: str, state: dict, evaluator_type: type = ProxyEvaluator) -> BaseProxyEvaluator:
    """Unpickling hook: the process-wide evaluator for ``token`` (built on first sight)."""
    existing = _WORKER_EVALUATORS.get(token)
    if existing is not None and type(existing) is evaluator_type:
        _WORKER_EVALUATORS.move_to_end(token)
        return existing
    evaluator = object.__new__(evaluator_type)
    _install_state(evaluator, token, state)
    _WORKER_EVALUATORS[token] = evaluator
    while len(_WORKER_EVALUATORS) > WORKER_REGISTRY_SIZE:
        _WORKER_EVALUATORS.popitem(last=False)
    return evaluator


def evaluate_widths(evaluator: ProxyEvaluator, widths_batch: Sequence) -> list[Result]:
    """Task function for joblib/Dask: score several width vectors with a (worker-side) evaluator."""
    return [evaluator.evaluate(widths) for widths in widths_batch]


def default_proxy_data(data, train_indices: np.ndarray, settings: ProxySettings, *, seed: int) -> ProxyData:
    """ProxyData sized for ``settings``: ``calibration_batches * calibration_batch_size`` calibration and
    ``validation_images`` proxy-validation images from the training split."""
    return ProxyData.from_image_data(
        data,
        train_indices,
        calibration_images=max(1, settings.calibration_images),
        validation_images=settings.validation_images,
        seed=seed,
    )


def finalist_proxy_data(
    data, train_indices: np.ndarray, proxy: ProxySettings, finalist: ProxySettings, *, seed: int
) -> ProxyData:
    """ProxyData for re-scoring finalists: ``finalist.calibration_images`` calibration images and
    ``finalist.validation_images`` validation images disjoint from the search proxy's validation images
    (and from the finalists' calibration images) -- as many as the training split has left; on a split
    too small for even one, the search proxy's own validation images are reused, with a warning."""
    from acp.proxy.data import proxy_slices

    def slices(train, calibration_images, validation_images, seed):
        return proxy_slices(data.labels, train, calibration_images, validation_images, seed=seed)

    train = np.unique(np.asarray(train_indices, dtype=np.int64))
    calibration_images, count, avoid = finalist_slice_sizes(slices, train, proxy, finalist, seed=seed)
    return ProxyData.from_image_data(
        data,
        train,
        calibration_images=calibration_images,
        validation_images=count,
        seed=seed,
        avoid=avoid,
    )


def finalist_slice_sizes(
    slices, train: np.ndarray, proxy: ProxySettings, finalist: ProxySettings, *, seed: int
) -> tuple[int, int, np.ndarray | None]:
    """(calibration images, validation images, indices the validation slice avoids) of the finalists'
    proxy data (:func:`finalist_proxy_data`), for a task's ``slices(train, calibration_images,
    validation_images, seed) -> (calibration, validation)`` indices."""
    _, used = slices(train, max(1, proxy.calibration_images), proxy.validation_images, seed)
    calibration_images = min(max(1, finalist.calibration_images), len(train) - 1)
    calibration, _ = slices(train, calibration_images, 1, seed)
    left = len(np.setdiff1d(np.setdiff1d(train, calibration), used))
    avoid, count = used, min(finalist.validation_images, left)
    if count < 1:
        log.warning("training split too small: finalists are re-scored on the search's validation images")
        avoid, count = None, min(finalist.validation_images, len(train) - calibration_images)
    elif count < finalist.validation_images:
        log.info("finalists are re-scored on %d validation images (all the training split has left)", count)
    return calibration_images, count, avoid


def fit_to_training_split(settings: ProxySettings, train_size: int) -> ProxySettings:
    """``settings`` shrunk to fit a small training split: at most half of it for proxy validation, the
    rest for calibration batches (logged when anything shrinks)."""
    validation = min(settings.validation_images, train_size // 2)
    room = train_size - validation
    if settings.calibration_images <= room and validation == settings.validation_images:
        return settings
    if settings.calibration_images <= room:
        return settings.replace(validation_images=validation)
    batch_size = min(settings.calibration_batch_size, room)
    fitted = settings.replace(
        validation_images=validation,
        calibration_batch_size=batch_size,
        calibration_batches=max(1, room // batch_size),
    )
    log.info(
        "small training split (%d images): proxy uses %d calibration batches of %d and %d validation images",
        train_size,
        fitted.calibration_batches,
        batch_size,
        validation,
    )
    return fitted


__all__ = [
    "FAILED_SCORE",
    "BaseProxyEvaluator",
    "ProxyData",
    "ProxyEvaluator",
    "ProxySettings",
    "Result",
    "batchnorm_layers",
    "combined_score",
    "default_proxy_data",
    "evaluate_widths",
    "finalist_proxy_data",
    "finalist_slice_sizes",
    "fit_to_training_split",
    "recalibrate_batchnorm",
    "score_model",
]
