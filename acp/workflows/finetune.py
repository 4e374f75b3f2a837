"""``acp finetune`` / ``acp.finetune(...)``: retrain an architecture with its run's weights, data and split.

Where ``weights``/``data`` are not given they come from the run the architecture belongs to (the
``config.toml`` beside ``best_arch.json``, or one level up for ``DIR/finetune``), and so do the split --
method *and seed*, so the pruned model is validated on exactly the images the base model was validated
on -- and the ``[finetune]`` recipe; keyword arguments override single fields of that recipe.
``acp finetune runs/r20/best_arch.json --epochs 30 --out runs/r20/ft`` needs nothing else. The output
directory records those settings in its own ``config.toml``, so ``acp eval DIR`` uses the same split.

Images are normalized with the mean/std the architecture records (the base model was trained with them),
and the retrained model's ``arch.json`` records the preprocessing it was trained with (mean, std, input
size, class names), so ``acp.load_pruned(DIR).preprocessing`` says how to prepare its input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from acp.core.architecture import Architecture
from acp.core.preprocessing import Preprocessing
from acp.errors import UserError
from acp.settings import DataSettings, FinetuneSettings, ModelSettings, RunSettings, Schedule
from acp.train.finetune import FinetuneResult
from acp.workflows import rundir

log = logging.getLogger(__name__)


def finetune(
    arch: str | os.PathLike | Architecture,
    *,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    data: str | None = None,
    split: str | None = None,
    split_seed: int | None = None,
    training_schedule: Schedule | None = None,
    distill: bool | None = None,
    resume: bool = False,
    progress: bool = True,
    measure_latency_of_models: bool = True,
    on_epoch=None,
    **recipe,
) -> FinetuneResult:
    """Materialize ``arch`` from the unpruned ``weights`` and finetune it (see the module docstring).

    ``recipe`` holds ``[finetune]`` fields (``epochs``, ``lr``, ``batch_size``, ``threads``, ...) that
    override the run's; ``training_schedule`` replaces the whole training recipe (then only ``threads`` and
    ``distill`` are read from the settings).
    """
    from acp.fileio import load_weights_into
    from acp.models.detection import is_detector
    from acp.prune import build_space, load_architecture
    from acp.threads import available_cores
    from acp.train.finetune import finetune_model
    from acp.workflows.problem import load_split_data, normalized_as_recorded

    unknown = sorted(set(recipe) - {spec.name for spec in dataclasses.fields(FinetuneSettings)})
    if unknown:
        raise UserError(
            f"finetune: unknown setting {unknown[0]!r} (the [finetune] fields are "
            f"{', '.join(spec.name for spec in dataclasses.fields(FinetuneSettings))}; a whole "
            "training recipe is training_schedule=Schedule(...))"
        )
    run = None if isinstance(arch, Architecture) else rundir.run_settings_near(arch)
    settings = (run.finetune if run is not None else FinetuneSettings()).replace(**recipe)
    data_settings = _data_settings(run, data, split, split_seed)
    if weights is None and run is not None:
        weights = run.model.weights
    if weights is None:
        raise UserError("finetune: --weights (the unpruned model's state_dict) is required here")
    if data_settings.spec is None:
        raise UserError("finetune: --data is required here (no config.toml beside the architecture)")

    if isinstance(arch, Architecture):
        base, space = build_space(arch.model, arch.space)
        arch.validate_against(space)
    else:
        arch, base, space = load_architecture(arch)
    load_weights_into(base, weights)
    task_options = {}
    if is_detector(base):  # detection data; a detector normalizes its own inputs (its transform)
        from acp.proxy.detection_score import score_detector
        from acp.workflows.problem import load_detection_split_data

        train_data, splits = load_detection_split_data(data_settings, arch.model, source="finetune")
        task_options["score_detector"] = score_detector
    else:
        train_data, splits = load_split_data(data_settings)
        train_data = normalized_as_recorded(train_data, arch.preprocessing, what="finetune")
        if train_data.image_shape == tuple(arch.model.input_size):  # else finetune_model says what is wrong
            arch = arch.with_preprocessing(_trained_preprocessing(arch, train_data))
    threads = settings.threads or available_cores()
    result = finetune_model(
        arch,
        base,
        space,
        train_data,
        splits,
        out_dir=out_dir,
        schedule=training_schedule if training_schedule is not None else settings.to_schedule(),
        distill=settings.distill if distill is None else distill,
        resume=resume,
        threads=threads,
        progress=progress,
        measure_latency_of_models=measure_latency_of_models,
        on_epoch=on_epoch,
        provenance={"weights": str(weights), "data": str(data_settings.spec), "threads": threads},
        **task_options,
    )
    # The retrained model's own record of its data and split, so `acp eval DIR` validates on the same images.
    model = run.model if run is not None else ModelSettings(name=arch.model.name)
    recorded = RunSettings(
        model=model.replace(weights=os.path.abspath(weights)),
        data=data_settings.replace(spec=absolute_spec(data_settings.spec)),
        finetune=settings,
    )
    rundir.write_run_settings(Path(out_dir), recorded)
    return result


def _trained_preprocessing(arch: Architecture, image_data) -> Preprocessing:
    """The preprocessing the retrained model learns with: ``image_data``'s normalization and image shape,
    and its class names (which output means which class) when they fit the model's outputs."""
    recorded = Preprocessing.of_data(image_data)
    carried = arch.preprocessing
    if carried is not None and carried.class_names not in (None, recorded.class_names):
        log.warning(
            "finetune: the data's classes %s differ from the architecture's %s; recording the data's",
            list(recorded.class_names)[:5],
            list(carried.class_names)[:5],
        )
    num_classes = arch.model.num_classes
    if num_classes is not None and len(recorded.class_names) != num_classes:
        return dataclasses.replace(recorded, class_names=None)
    return recorded


def absolute_spec(spec: str) -> str:
    """A data spec that still names the same images when read from another directory (a generated set's
    name stays as it is)."""
    from acp.settings import GENERATED_DATA

    generated = any(spec == name or spec.startswith(f"{name}:") for name in GENERATED_DATA)
    return spec if generated else os.path.abspath(spec)


def _data_settings(run, spec: str | None, split: str | None, seed: int | None) -> DataSettings:
    """The run's ``[data]`` with any field the caller gave replaced (no run: the defaults)."""
    base = run.data if run is not None else DataSettings()
    try:
        return base.replace(spec=spec, split=split, seed=seed)
    except UserError as error:
        raise UserError(f"finetune: {error}") from None
