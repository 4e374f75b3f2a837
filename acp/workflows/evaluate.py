"""``acp eval`` / ``acp.evaluate(...)``: accuracy, loss, MACs and params of a base or pruned model.

A pruned model of a run (its ``best_arch.json``, or ``DIR/finetune``) is evaluated on the run's split
(method and seed from the run's ``config.toml``) unless the caller names another, and its images are
normalized with the mean/std its architecture records (those it was trained with), not with statistics of
the images given; an architecture that records none uses the images' own, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acp.errors import UserError, one_line
from acp.settings import DataSettings
from acp.workflows import rundir


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    images: int
    macs: int
    params: int


@dataclass
class DetectionEvaluation:
    """A detector on detection data: mAP@0.5 and mAP@[.5:.95] (COCO's 101-point APs, difficult / crowd
    objects neither hits nor misses; :mod:`acp.proxy.detection_score`) and the network's MACs/params at the
    architecture's (or the detector's default) input size."""

    map50: float
    map: float
    images: int
    macs: int
    params: int


EVAL_BATCH_SIZE = 8  # detector images per forward in acp eval


def evaluate(
    arch: str | Path | None = None,
    *,
    model: str | None = None,
    weights: str | None = None,
    data: str,
    split: str = "val",
    split_method: str | None = None,
    split_seed: int | None = None,
    threads: int | None = None,
    random_weights: bool = False,
) -> Evaluation:
    """Evaluate a pruned model (``arch``: an architecture JSON or a saved pruned-model directory) or a
    base model (``model`` + ``weights``) on ``data``'s ``split`` ("train", "val" or "all").

    A base model needs its ``weights``; ``random_weights=True`` evaluates a randomly initialized one
    instead (a chance-level baseline), only when asked for."""
    import torch

    from acp.data import load_data, make_splits
    from acp.threads import available_cores, torch_threads
    from acp.train.loop import evaluate as evaluate_model
    from acp.workflows.problem import normalized_as_recorded

    if arch is None and model is None:
        raise UserError("acp eval: give an architecture JSON or --model NAME")
    if random_weights and (arch is not None or weights is not None):
        raise UserError(
            "acp eval: --random-weights goes with --model NAME alone (no architecture, no --weights)"
        )
    if arch is None and weights is None and not random_weights:
        from acp.models import check_model_name

        check_model_name(model)  # a mistyped name is the first thing to say
        raise UserError(
            f"acp eval --model {model}: --weights W is required (the model's trained state_dict); "
            "--random-weights evaluates a randomly initialized network instead"
        )
    run = rundir.run_settings_near(arch) if arch is not None else None
    base_data = run.data if run is not None else DataSettings()
    data_settings = base_data.replace(spec=data, split=split_method, seed=split_seed)
    from acp.detection_data import is_detection_spec

    if is_detection_spec(data_settings.spec):
        return _evaluate_detector(arch, model, weights, data_settings, split, threads)
    images = load_data(
        data_settings.spec,
        cache_limit_gb=data_settings.cache_limit_gb,
        loader_workers=data_settings.loader_workers,
    )
    splits = make_splits(images, data_settings.split, seed=data_settings.seed)
    if arch is not None:
        network, recorded = _pruned_model(arch, weights)
        input_size = tuple(recorded.model.input_size)
        images = normalized_as_recorded(images, recorded.preprocessing, what="acp eval")
        if images.image_shape != input_size:  # the recorded MACs/params hold only at the architecture's size
            raise UserError(
                f"images of data {data} are {'x'.join(map(str, images.image_shape))}, but the architecture's "
                f"input size is {'x'.join(map(str, input_size))}"
            )
    else:
        from acp.fileio import load_weights_into
        from acp.models import create_model

        network = create_model(model, num_classes=images.num_classes)
        if weights is not None:
            load_weights_into(network, weights)
    check_input_fits(network, images.image_shape, data)
    indices = {"train": splits.train, "val": splits.val, "all": np.arange(len(images))}[split]
    with torch_threads(threads or available_cores()), torch.no_grad():
        accuracy, loss = evaluate_model(network, images, indices)
    macs, params = count_macs_and_params(network, images.image_shape)
    return Evaluation(accuracy, loss, int(len(indices)), macs, params)


def _evaluate_detector(arch, model, weights, data_settings: DataSettings, split: str, threads):
    import torch

    from acp.core.architecture import ModelIdentity
    from acp.detection_data import iterate_detection_batches, load_detection_data, make_detection_splits
    from acp.models.detection import detector_input_size, is_detector
    from acp.proxy.detection_score import detect, mean_average_precision
    from acp.prune import space_for
    from acp.threads import available_cores, torch_threads

    data = load_detection_data(data_settings.spec)
    splits = make_detection_splits(data, data_settings.split, seed=data_settings.seed)
    if arch is not None:
        network, recorded = _pruned_model(arch, weights)
        macs, params = recorded.macs, recorded.params
    else:
        from acp.fileio import load_weights_into
        from acp.models import create_model

        network = create_model(model, num_classes=data.num_classes)
        if weights is not None:
            load_weights_into(network, weights)
        recorded = None
    if not is_detector(network):
        raise UserError(
            f"acp eval: data {data_settings.spec} is detection data, but the model is no box detector"
        )
    if recorded is None:
        identity = ModelIdentity(model, data.num_classes, detector_input_size(model), {})
        space = space_for(network, identity, {})
        macs, params = space.base_macs, space.base_params
    indices = {"train": splits.train, "val": splits.val, "all": np.arange(len(data))}[split]
    batches = iterate_detection_batches(data, indices, EVAL_BATCH_SIZE, with_ignored=True)
    with torch_threads(threads or available_cores()), torch.no_grad():
        predictions, targets = detect(network, batches)
    return DetectionEvaluation(
        mean_average_precision(predictions, targets, metric="map50"),
        mean_average_precision(predictions, targets, metric="map"),
        int(len(indices)),
        int(macs),
        int(params),
    )


def _pruned_model(arch_path, weights):
    """The pruned model of ``arch_path`` and its Architecture: ``weights`` are the pruned model's own (as
    saved by prune / finetune), or -- recognized by their shapes -- the unpruned model's, then pruned."""
    from acp.fileio import load_state_dict_file, load_state_into
    from acp.prune import architecture_file, load_architecture, load_pruned, materialize

    arch, base, space = load_architecture(architecture_file(arch_path))
    if weights is not None and not Path(arch_path).is_dir():
        state = load_state_dict_file(weights)
        base_shapes = {key: tuple(value.shape) for key, value in base.state_dict().items()}
        if {key: tuple(value.shape) for key, value in state.items()} == base_shapes:
            load_state_into(base, state, weights)
            return materialize(base, arch, space), arch
    return load_pruned(arch_path, weights), arch


def check_input_fits(model, image_shape: tuple[int, int, int], spec: str) -> None:
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape))
    except RuntimeError as error:
        raise UserError(
            f"images of data {spec} ({'x'.join(map(str, image_shape))}) do not fit the model: "
            f"{one_line(error)[:160]}"
        ) from None


def count_macs_and_params(model, image_shape) -> tuple[int, int]:
    import torch
    import torch_pruning as tp

    from acp.core.graph import count_subclasses_as_their_base

    count_subclasses_as_their_base(model)  # as the cost model counts them (timm's Conv2dSame, ...)
    macs, params = tp.utils.count_ops_and_params(model.eval(), torch.zeros(1, *image_shape))
    return int(macs), int(params)
