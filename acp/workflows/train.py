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
    from acp.fileio import atomic_write_json, load_weights_into
    from acp.models import create_model
    from acp.threads import available_cores
    from acp.train.loop import train
    from acp.workflows.evaluate import check_input_fits
    from acp.workflows.problem import load_split_data

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
