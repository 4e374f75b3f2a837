"""From run settings to the objects every stage needs: model identity, base model, channel space, data.

``load_problem(settings)`` is the first step of the data flow (DESIGN.md): it builds the model named by
``[model]``, loads its weights (``weights_only=True``), and analyses its channel groups. Images are
loaded separately (``problem.data()``), only by the stages that need them, split by ``[data]`` -- the
one split every stage of a run uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from acp.core.architecture import ModelIdentity
from acp.core.space import ChannelSpace
from acp.errors import UserError
from acp.settings import DataSettings, RunSettings, load_settings, settings_for_model

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """A model to prune: its settings, what it is, its (trained) weights, and its channel space."""

    settings: RunSettings
    identity: ModelIdentity
    model: nn.Module
    space: ChannelSpace
    weights: str | None  # the weights file actually loaded (None: random init)
    task: str = "classification"  # "classification" or "detection" (task_of)
    _data: tuple | None = field(default=None, repr=False)

    def data(self):
        """(ImageData, Splits) of ``[data]`` (the image shape must fit the model), or for a detection task
        (DetectionData, Splits) (its classes must fit the detector)."""
        if self._data is None:
            if self.task == "detection":
                self._data = load_detection_split_data(
                    self.settings.data, self.identity, source=self.settings.source
                )
            else:
                self._data = load_split_data(self.settings.data, self.identity, source=self.settings.source)
        return self._data


def task_of(settings: RunSettings, model: nn.Module) -> str:
    """``[task] kind``, ``auto`` resolved by the model (a torchvision box detector: detection); a kind the
    model cannot do is a UserError naming ``[task].kind``."""
    from acp.models.detection import is_detector

    detector = is_detector(model)
    kind = settings.task.kind
    if kind == "auto":
        return "detection" if detector else "classification"
    if (kind == "detection") != detector:
        what = "a torchvision box detector" if detector else "not a box detector acp knows"
        raise UserError(f"{settings.source}: [task].kind = {kind!r}, but {settings.model.name} is {what}")
    return kind


def load_detection_split_data(data: DataSettings, identity: ModelIdentity, *, source: str = "config"):
    """(DetectionData, Splits) for ``data``; the detector's ``num_classes`` (background included) must be
    the data's."""
    from acp.detection_data import is_detection_spec, load_detection_data, make_detection_splits

    if data.spec is None:
        raise UserError(f"{source}: [data].spec is required for this command")
    if not is_detection_spec(data.spec):
        raise UserError(
            f"{source}: [data].spec: {data.spec} is not detection data (shapes[:SIZE], a Pascal VOC tree "
            "or COCO instances), but the model is a box detector"
        )
    detection = load_detection_data(data.spec)
    if identity.num_classes is not None and detection.num_classes != identity.num_classes:
        raise UserError(
            f"data {data.spec} has {detection.num_classes - 1} object classes + background = "
            f"{detection.num_classes}, but [model].num_classes is {identity.num_classes}"
        )
    return detection, make_detection_splits(detection, data.split, seed=data.seed)


def load_split_data(data: DataSettings, identity: ModelIdentity | None = None, *, source: str = "config"):
    """(ImageData, Splits) for ``data`` (spec, split method and its seed), checked against the model."""
    from acp.data import load_data, make_splits

    if data.spec is None:
        raise UserError(f"{source}: [data].spec is required for this command")
    images = load_data(data.spec, cache_limit_gb=data.cache_limit_gb, loader_workers=data.loader_workers)
    if identity is not None:
        if images.image_shape != tuple(identity.input_size):
            raise UserError(
                f"images of data {data.spec} are {'x'.join(map(str, images.image_shape))}, but the model's "
                f"input size is {'x'.join(map(str, identity.input_size))} ([model].input_size)"
            )
        if identity.num_classes is not None and images.num_classes != identity.num_classes:
            raise UserError(
                f"data {data.spec} has {images.num_classes} classes, but [model].num_classes is "
                f"{identity.num_classes}"
            )
    return images, make_splits(images, data.split, seed=data.seed)


def normalized_as_recorded(images, preprocessing, *, what: str):
    """``images`` normalized with the mean/std a trained model carries (``preprocessing``; None: the
    images' own statistics, as before acp recorded them). A model works on images prepared as it was
    trained, not on statistics of whichever images it is given next."""
    if preprocessing is None:
        return images
    if (tuple(images.mean), tuple(images.std)) != (preprocessing.mean, preprocessing.std):
        log.info(
            "%s: normalizing %s with the recorded mean %s / std %s (the images' own: %s / %s)",
            what,
            images.spec,
            list(preprocessing.mean),
            list(preprocessing.std),
            list(images.mean),
            list(images.std),
        )
    return images.with_normalization(preprocessing.mean, preprocessing.std)


def resolve_settings(config_or_model: str) -> RunSettings:
    """Settings from a TOML path, or defaults for a bare model name."""
    looks_like_file = config_or_model.endswith(".toml") or Path(config_or_model).is_file()
    return load_settings(config_or_model) if looks_like_file else settings_for_model(config_or_model)


def model_identity(settings: RunSettings) -> ModelIdentity:
    from acp.models import check_model_name, default_input_size

    model = settings.model
    try:
        check_model_name(model.name)
    except UserError as error:
        raise UserError(f"{settings.source}: [model].name: {error}") from None
    input_size = model.input_size or default_input_size(model.name, dict(model.kwargs))
    if input_size is None:
        raise UserError(f"{settings.source}: [model].input_size is required for {model.name!r}")
    return ModelIdentity(model.name, model.num_classes, tuple(input_size), dict(model.kwargs))


def load_problem(
    settings: RunSettings,
    *,
    require_weights: bool = False,
    random_weights: bool = False,
    random_weights_option: str | None = None,
) -> Problem:
    """Build the model, load its weights and analyse its channel space.

    A ``[model].weights`` that names no file is always an error: a mistyped path must not turn into a
    confident answer about a randomly initialized network. With no weights configured, ``require_weights``
    (search, cluster) makes it an error too; otherwise the model keeps its random initialization and a
    warning says so (``acp info resnet20_cifar``: the channel groups do not depend on the weights).
    ``random_weights`` is the explicit opt-in: the configured weights are not read at all.
    ``random_weights_option`` names that opt-in (e.g. ``"--random-weights"``) in the error messages.
    """
    from acp.fileio import load_weights_into
    from acp.models import create_model
    from acp.prune import space_for

    identity = model_identity(settings)
    model = create_model(identity.name, identity.num_classes, **identity.kwargs)
    weights = settings.model.weights
    hint = (
        f"; {random_weights_option} uses a randomly initialized network instead"
        if random_weights_option
        else ""
    )
    if random_weights:
        if weights is not None:
            log.warning("random weights asked for: %s is not read", weights)
        weights = None
    elif weights is not None and Path(weights).is_file():
        load_weights_into(model, weights)
    elif weights is not None:
        reason = (
            f"a trained weights file is required ({weights} not found)"
            if require_weights
            else f"weights file not found: {weights}"
        )
        raise UserError(f"{settings.source}: [model].weights: {reason}{hint}")
    elif require_weights:
        raise UserError(f"{settings.source}: [model].weights: a trained weights file is required{hint}")
    else:  # acp info MODEL_NAME: the channel groups do not depend on the weights
        log.info("no [model].weights: using a randomly initialized %s", identity.name)
    task = task_of(settings, model)
    settings.proxy.require_task(task)
    space = space_for(model, identity, settings.space.to_dict())
    return Problem(settings, identity, model, space, weights, task)


def base_weights(arch_path, weights: str | None, *, random_weights: bool = False) -> str | None:
    """The unpruned weights ``acp prune`` starts from: ``weights``, else ``[model].weights`` of the run
    ``arch_path`` belongs to (as ``acp finetune`` reads them); None only when ``random_weights``."""
    from acp.workflows.rundir import run_settings_near

    if random_weights:
        if weights is not None:
            raise UserError("acp prune: give --weights or --random-weights, not both")
        return None
    if weights is not None:
        return weights
    run = run_settings_near(arch_path)
    if run is None or run.model.weights is None:
        raise UserError(
            f"acp prune: --weights BASE.pt is required (no run config.toml beside {arch_path} names the "
            "unpruned model's weights); --random-weights prunes a randomly initialized model instead"
        )
    if not Path(run.model.weights).is_file():
        raise UserError(f"{run.source}: [model].weights: weights file not found: {run.model.weights}")
    return run.model.weights
