"""``acp train``: train a base model on a data spec, resumable, recording the split it was validated on."""

from __future__ import annotations

from pathlib import Path

import torch

from acp.settings import DataSettings, Schedule


def train_base(
    model_name: str,
    data: DataSettings,
    schedule: Schedule,
    out_dir: str | Path,
    *,
    weights: str | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
):
    """Train ``model_name`` (optionally from ``weights``) into ``out_dir``: ``weights.pt``, ``metrics.json``,
    ``checkpoint.pt``, ``model.json`` (identity) and ``data.json`` (the data and the split, seed included).
    Returns the epoch history. The initial weights are drawn from ``schedule.seed``: the same command
    gives the same weights, bit for bit."""
    from acp.data import dump_description
    from acp.detection_data import is_detection_spec
    from acp.fileio import atomic_write_json, load_weights_into
    from acp.models import create_model
    from acp.threads import available_cores
    from acp.train.loop import train
    from acp.workflows.evaluate import check_input_fits
    from acp.workflows.problem import load_split_data

    if data.spec is not None and is_detection_spec(data.spec):
        return _train_detector(model_name, data, schedule, Path(out_dir), weights, resume, threads, progress)
    images, splits = load_split_data(data)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, not torch's global state
        torch.manual_seed(schedule.seed)
        model = create_model(model_name, num_classes=images.num_classes)
    if weights is not None:
        load_weights_into(model, weights)
    check_input_fits(model, images.image_shape, data.spec)
    out_dir = Path(out_dir)
    if resume and (out_dir / "data.json").is_file():
        import json

        from acp.train.finetune import check_same_split

        check_same_split(json.loads((out_dir / "data.json").read_text()).get("split"), splits, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {"name": model_name, "num_classes": images.num_classes, "input_size": list(images.image_shape)}
    atomic_write_json(out_dir / "model.json", identity)
    dump_description(out_dir / "data.json", images, splits)
    return train(
        model,
        images,
        splits.train,
        splits.val,
        schedule,
        out_dir,
        resume=resume,
        progress=progress,
        threads=threads or available_cores(),
    )


def _train_detector(
    model_name, data: DataSettings, schedule, out_dir: Path, weights, resume, threads, progress
):
    """``train_base`` on detection data: a torchvision detector with ``num_classes`` = the data's classes +
    background, trained on its loss dictionary and validated by mAP@0.5 (acp.train.detection_loop)."""
    import json

    from acp.detection_data import describe_detection_data, load_detection_data, make_detection_splits
    from acp.errors import UserError
    from acp.fileio import atomic_write_json, load_weights_into
    from acp.models import create_model
    from acp.models.detection import detector_input_size, is_detector
    from acp.proxy.detection_score import score_detector
    from acp.threads import available_cores
    from acp.train.detection_loop import train_detector
    from acp.train.finetune import check_same_split

    detection = load_detection_data(data.spec)
    splits = make_detection_splits(detection, data.split, seed=data.seed)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, not torch's global state
        torch.manual_seed(schedule.seed)
        model = create_model(model_name, num_classes=detection.num_classes)
    if not is_detector(model):
        raise UserError(f"acp train: data {data.spec} is detection data, but {model_name} is no box detector")
    if weights is not None:
        load_weights_into(model, weights)
    if resume and (out_dir / "data.json").is_file():
        check_same_split(json.loads((out_dir / "data.json").read_text()).get("split"), splits, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": model_name,
        "num_classes": detection.num_classes,
        "input_size": list(detector_input_size(model_name)),
    }
    atomic_write_json(out_dir / "model.json", identity)
    atomic_write_json(out_dir / "data.json", describe_detection_data(detection, splits))
    return train_detector(
        model,
        detection,
        splits.train,
        splits.val,
        out_dir=out_dir,
        schedule=schedule,
        score_detector=score_detector,
        resume=resume,
        progress=progress,
        threads=threads or available_cores(),
    )
