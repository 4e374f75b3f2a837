from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acp.core.architecture import Architecture, ModelIdentity
from acp.errors import UserError
from acp.prune import build_space, load_pruned, materialize
from acp.settings import RunSettings, Schedule
from acp.workflows.finetune import finetune

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {"widths": [8, 16, 16]})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A trained tiny base model on digits and a half-width architecture of it."""
    from acp.data import load_data, make_splits
    from acp.train.loop import train

    root = tmp_path_factory.mktemp("ft")
    base, space = build_space(IDENTITY)
    data = load_data("digits:16")
    splits = make_splits(data, "auto")
    train(
        base,
        data,
        splits.train,
        splits.val,
        Schedule(epochs=2, batch_size=32, lr=0.1, augment=False),
        root / "base",
        progress=False,
    )
    widths = space.uniform_widths(0.5)
    keep = {group.id: list(range(int(width))) for group, width in zip(space.groups, widths)}
    arch = Architecture.from_widths(
        space, IDENTITY, widths, keep, space_settings=space.settings, provenance={"source": "uniform"}
    )
    arch.save(root / "run" / "best_arch.json")
    config = RunSettings.from_document(
        {
            "model": {"name": IDENTITY.name, "weights": str(root / "base" / "weights.pt")},
            "data": {"spec": "digits:16"},
        }
    )
    (root / "run" / "config.toml").write_text(config.to_toml())
    return root, arch


SCHEDULE = Schedule(epochs=2, batch_size=32, lr=0.05, augment=False)


def test_finetune_improves_and_writes_a_loadable_model(base_run):
    root, arch = base_run
    result = finetune(
        root / "run" / "best_arch.json", out_dir=root / "ft", training_schedule=SCHEDULE, progress=False
    )
    metrics = json.loads((root / "ft" / "metrics.json").read_text())
    assert metrics["val_accuracy_after"] > metrics["val_accuracy_before"]
    assert metrics["macs"] == arch.macs and metrics["params"] == arch.params
    assert metrics["macs_ratio"] == pytest.approx(arch.macs / arch.base_macs)
    assert set(metrics["latency_cpu"]) == {"batch1", "batch64"}
    assert metrics["base_val_accuracy"] > 0.5
    assert (root / "ft" / "training_curve.png").stat().st_size > 1000
    loaded = load_pruned(root / "ft").eval()
    example = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(example), result.model.eval()(example))


def test_finetune_resume_matches_an_uninterrupted_run(base_run, tmp_path):
    root, _ = base_run
    arch_path = root / "run" / "best_arch.json"
    finetune(
        arch_path,
        out_dir=tmp_path / "straight",
        training_schedule=SCHEDULE,
        progress=False,
        measure_latency_of_models=False,
    )

    class Crash(Exception):
        pass

    def crash(record):
        raise Crash

    with pytest.raises(Crash):
        finetune(
            arch_path,
            out_dir=tmp_path / "resumed",
            training_schedule=SCHEDULE,
            progress=False,
            measure_latency_of_models=False,
            on_epoch=crash,
        )
    finetune(
        arch_path,
        out_dir=tmp_path / "resumed",
        training_schedule=SCHEDULE,
        resume=True,
        progress=False,
        measure_latency_of_models=False,
    )
    straight = torch.load(tmp_path / "straight" / "weights.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "weights.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and metrics["epochs_trained"] == 2


def test_finetune_inherits_the_base_weights(base_run, tmp_path):
    root, arch = base_run
    from acp.fileio import load_weights_into

    base, space = build_space(IDENTITY)
    load_weights_into(base, root / "base" / "weights.pt")
    expected = materialize(base, arch, space).state_dict()
    result = finetune(
        root / "run" / "best_arch.json",
        out_dir=tmp_path / "zero",
        training_schedule=Schedule(
            epochs=1, batch_size=32, lr=1e-9, momentum=0.0, weight_decay=0.0, augment=False
        ),
        progress=False,
        measure_latency_of_models=False,
    )
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked") or "running" in key:
            continue
        assert torch.allclose(result.model.state_dict()[key], tensor, atol=1e-6), key


def test_finetune_errors(base_run, tmp_path):
    root, arch = base_run
    lonely = tmp_path / "arch.json"
    arch.save(lonely)
    with pytest.raises(UserError, match="--weights"):
        finetune(lonely, out_dir=tmp_path / "x", training_schedule=SCHEDULE, progress=False)
    with pytest.raises(UserError, match="no checkpoint.pt"):
        finetune(
            root / "run" / "best_arch.json", out_dir=tmp_path / "y", resume=True, training_schedule=SCHEDULE
        )
    with pytest.raises(UserError, match="input size"):
        finetune(
            lonely,
            weights=root / "base" / "weights.pt",
            data="digits:8",
            out_dir=tmp_path / "z",
            training_schedule=SCHEDULE,
            progress=False,
        )
    assert np.isfinite(arch.macs_ratio)
