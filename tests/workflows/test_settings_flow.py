"""The settings reach every stage: one split seed per run, no silently ignored option, every setting
checked before the expensive part, threads pinned while training (issue 13's bugs, each fails on 43f758b)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.data import load_data, make_splits
from acp.errors import UserError
from acp.models import create_model
from acp.settings import FinetuneSettings, ProposeSettings, RunSettings, SearchSettings, load_settings

RANDOM_SPLIT_CONFIG = (
    TINY_SEARCH_CONFIG.replace(
        '[data]\nspec = "digits:16"\n', '[data]\nspec = "digits:16"\nsplit = "random:0.2"\nseed = 3\n'
    )
    + "\n[finetune]\nepochs = 1\nbatch_size = 16\nlr = 0.03\nweight_decay = 0.001\n"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny search whose data use a random split with seed 3 and a [finetune] recipe."""
    root = tmp_path_factory.mktemp("flow")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), root / "weights.pt")
    (root / "space.toml").write_text(RANDOM_SPLIT_CONFIG, encoding="utf-8")
    assert main(["search", str(root / "space.toml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def finetune_run(run_dir, out, *flags) -> dict:
    """``acp finetune`` of the run's best architecture for one epoch; returns its metrics.json."""
    arch = str(run_dir / "best_arch.json")
    argv = ["finetune", arch, "--epochs", "1", *flags, "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_finetune_validates_on_the_runs_split_whatever_its_own_seed(run_dir, tmp_path):
    """Bug 1: the finetune seed used to re-draw a random:F split: 'validation' held base-training images."""
    metrics = finetune_run(run_dir, tmp_path / "ft", "--seed", "1")
    expected = make_splits(load_data("digits:16"), "random:0.2", seed=3).describe()
    assert metrics["split"] == expected
    assert metrics["schedule"]["seed"] == 1  # the training seed is the finetune's own


def test_finetune_uses_the_runs_finetune_section(run_dir, tmp_path):
    """Bug 2: `acp finetune` ignored [finetune]; flags override single fields of it."""
    schedule = finetune_run(run_dir, tmp_path / "ft", "--lr", "0.04")["schedule"]
    assert (schedule["batch_size"], schedule["weight_decay"], schedule["lr"]) == (16, 0.001, 0.04)


def test_eval_of_a_run_uses_the_runs_split(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    accuracy = finetune_run(run_dir, out)["val_accuracy_after"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "digits:16"]) == 0
    printed = capsys.readouterr().out
    expected = len(make_splits(load_data("digits:16"), "random:0.2", seed=3).val)
    assert f"[val, {expected} images]" in printed
    assert f"top-1 accuracy {accuracy * 100:.2f}%" in printed


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_dbscan_with_a_budget_is_refused(run_dir, capsys):
    code, err = run_cli(
        capsys, "cluster", str(run_dir / "config.toml"), "--mode", "dbscan", "--eps", "0.01", "--flops", "0.5"
    )
    assert code == 2 and "takes --eps, not --flops/--params" in err and len(err.strip().splitlines()) == 1


def test_ray_with_a_dask_scheduler_is_refused(run_dir, capsys, tmp_path):
    code, err = run_cli(
        capsys,
        "search",
        str(run_dir / "config.toml"),
        "--out",
        str(tmp_path / "r"),
        "--backend",
        "ray",
        "--dask-scheduler",
        "tcp://127.0.0.1:1",
    )
    assert code == 2 and "[search].backend: 'ray' and a dask_scheduler address" in err
    assert not (tmp_path / "r").exists()


def test_too_few_particles_for_the_uniform_baseline_is_refused(run_dir, capsys, tmp_path):
    """Bug 2: with --particles 3 the 'uniform' particle was silently replaced by a random one."""
    code, err = run_cli(
        capsys, "search", str(run_dir / "config.toml"), "--out", str(tmp_path / "r"), "--particles", "2"
    )
    assert code == 2 and "[search].random_particles" in err and "at most 0" in err
    with pytest.raises(UserError, match="at most 1"):
        SearchSettings(particles=3, random_particles=2)
    assert SearchSettings(particles=3, random_particles=1).particles == 3


def test_tolerance_is_the_threshold_of_the_below_budget_warning(caplog, tmp_path):
    """Bug 2: [search].tolerance was stored and never used: it is the gap past which the search warns."""
    from acp.core.architecture import ModelIdentity
    from acp.core.budget import Budget
    from acp.prune import build_space
    from acp.search.study import Study
    from acp.search.synthetic import SyntheticEvaluator

    identity = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {"widths": [8, 16, 16]})
    _, space = build_space(identity, {"round_to": 8})
    evaluator = SyntheticEvaluator(space, identity=identity)
    warnings = {}
    for tolerance in (0.0, 1.0):
        settings = SearchSettings(particles=4, iterations=1, random_particles=0, tolerance=tolerance)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="acp.search.study"):
            Study(space, evaluator, Budget(space, flops=0.8), settings, tmp_path / f"t{tolerance}").run()
        warnings[tolerance] = [r for r in caplog.records if "below the budget" in r.getMessage()]
    assert warnings[0.0] and not warnings[1.0]


@pytest.mark.parametrize(
    ("section", "text", "message"),
    [
        ("search", 'criterion = "l3"', "[search].criterion = 'l3' is not allowed (expected 'cluster', 'l1'"),
        (
            "budget",
            "flops = 1.5",
            "[budget].flops = 1.5 is not allowed (expected a number in (0, 1], or a list of them)",
        ),
        ("space", "round_to = 0", "[space].round_to = 0 is not allowed (expected a positive integer)"),
        ("proxy", "calibration_batches = 0", "[proxy].calibration_batches: must be >= 1 when recalibrate_bn"),
    ],
)
def test_every_setting_is_checked_before_any_work(tmp_path, capsys, section, text, message):
    """Bug 3: the weights and the data do not exist, yet the bad setting is what is reported."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[model]\nname = "resnet8_cifar"\nweights = "missing.pt"\n'
        f'[data]\nspec = "no/such/dir"\n[{section}]\n{text}\n'
    )
    with pytest.raises(UserError, match="bad.toml: " + __import__("re").escape(message)):
        load_settings(config)
    code, err = run_cli(capsys, "search", str(config), "--out", str(tmp_path / "r"), "--flops", "0.5")
    if section != "budget":  # a --flops on the command line replaces the config's [budget]
        assert code == 2 and message in err


def test_an_infeasible_budget_is_reported_before_the_data_are_read(tmp_path, capsys):
    config = tmp_path / "c.toml"
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), tmp_path / "w.pt")
    config.write_text('[model]\nname = "resnet8_cifar"\nweights = "w.pt"\n[data]\nspec = "no/such/dir"\n')
    code, err = run_cli(capsys, "cluster", str(config), "--flops", "0.001")
    assert code == 2 and "is infeasible" in err and "no/such/dir" not in err


def test_a_split_is_checked_when_the_settings_are_made():
    from acp.settings import DataSettings

    with pytest.raises(UserError, match=r"\[data\]\.split = 'random:2' is not allowed"):
        DataSettings(split="random:2")
    assert DataSettings(split="random:0.25").split == "random:0.25"


def test_propose_settings_check_their_combination():
    with pytest.raises(UserError, match="needs eps"):
        ProposeSettings(mode="dbscan")
    with pytest.raises(UserError, match=r"\[propose\]\.criterion = 'l3'"):
        ProposeSettings(criterion="l3")


def test_training_pins_its_threads(tmp_path):
    """Bug 4: acp train / finetune / demo never pinned torch threads; the settings' count is used while
    training and the caller's count is restored afterwards."""
    from acp.settings import Schedule
    from acp.train.loop import train

    data = load_data("digits:16")
    splits = make_splits(data, "random:0.2", seed=0)
    model = create_model("resnet8_cifar", num_classes=10)
    seen = []
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(
            model,
            data,
            splits.train[:64],
            splits.val[:32],
            Schedule(epochs=1, batch_size=32, augment=False),
            tmp_path,
            progress=False,
            threads=1,
            on_epoch=lambda record: seen.append(torch.get_num_threads()),
        )
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert FinetuneSettings().threads is None  # every available core, resolved by the workflow


def test_available_cores_follow_omp_num_threads(monkeypatch):
    import os

    from acp.threads import available_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert available_cores() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert available_cores() == len(os.sched_getaffinity(0))


def test_finetune_records_its_threads(run_dir, tmp_path):
    assert finetune_run(run_dir, tmp_path / "one", "--threads", "1")["threads"] == 1


def test_settings_round_trip_through_toml(tmp_path):
    settings = load_settings_from(RANDOM_SPLIT_CONFIG, tmp_path)
    again = tmp_path / "again.toml"
    again.write_text(settings.to_toml())
    assert load_settings(again) == settings
    assert RunSettings.from_document(settings.to_document()) == settings


def load_settings_from(text: str, folder) -> RunSettings:
    path = folder / "c.toml"
    path.write_text(text)
    return load_settings(path)


def test_a_stage_reads_no_run_configuration():
    """Bug 5: only workflows/ (and the settings module that defines it) read a config file."""
    import ast
    from pathlib import Path

    import acp

    package = Path(acp.__file__).parent
    readers = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        texts = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        if names & {"load_settings", "read_run_settings", "run_settings_near"} or "config.toml" in texts:
            readers.add(path.relative_to(package).parts[0])
    assert readers <= {"workflows", "settings.py", "__init__.py"}, readers
    assert np.all([True])


def test_a_foreign_config_one_folder_up_is_not_read(run_dir, tmp_path, capsys):
    """Only a run's own config.toml counts: an arch copied below some other project's config.toml is
    evaluated with the defaults, not with that file (which would not even parse)."""
    folder = tmp_path / "project" / "archs"
    folder.mkdir(parents=True)
    (tmp_path / "project" / "config.toml").write_text("[tool]\nx = 1\n")
    out = tmp_path / "ft"
    finetune_run(run_dir, out)
    (folder / "arch.json").write_text((out / "arch.json").read_text())
    (folder / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    capsys.readouterr()
    assert main(["eval", str(folder / "arch.json"), "--data", "digits:16"]) == 0
    assert "[val, " in capsys.readouterr().out


def test_a_finetune_records_absolute_paths(run_dir, tmp_path, monkeypatch):
    """The finetune directory's config.toml names the base weights absolutely, so a finetune of the
    finetuned model from another working directory finds them."""
    weights = run_dir.parent / "weights.pt"
    monkeypatch.chdir(run_dir.parent)
    out = tmp_path / "ft"
    finetune_run(run_dir, out, "--weights", "weights.pt")
    recorded = load_settings(out / "config.toml")
    assert recorded.model.weights == str(weights) and recorded.data.spec == "digits:16"
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["finetune", str(out / "arch.json"), "--epochs", "1", "--out", str(tmp_path / "again"), "--quiet"]
        )
        == 0
    )


def test_unknown_finetune_settings_are_user_errors(run_dir, tmp_path):
    from acp.workflows.finetune import finetune

    with pytest.raises(UserError, match="unknown setting 'epoch'"):
        finetune(run_dir / "best_arch.json", out_dir=tmp_path / "x", epoch=1)


def test_numpy_numbers_are_written_as_toml_numbers():
    from acp.settings import ModelSettings, SpaceSettings

    settings = RunSettings(
        model=ModelSettings(name="resnet8_cifar"),
        space=SpaceSettings(min_keep=np.float64(0.2), round_to=np.int64(8)),
    )
    assert type(settings.space.min_keep) is float and type(settings.space.round_to) is int
    assert "min_keep = 0.2" in settings.to_toml() and "round_to = 8" in settings.to_toml()


def test_a_resume_keeps_its_split(tmp_path, capsys):
    """acp train --resume with another split seed used to go on, validating on training images."""
    args = [
        "train",
        "--model",
        "resnet8_cifar",
        "--data",
        "digits:16",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--split",
        "random:0.2",
        "--no-augment",
        "--quiet",
        "--out",
        str(tmp_path / "base"),
    ]
    assert main(args) == 0
    before = (tmp_path / "base" / "data.json").read_text()
    code, err = run_cli(capsys, *[a if a != "1" else "2" for a in args], "--resume", "--split-seed", "7")
    assert code == 2 and "resume with the same --split/--split-seed" in err
    assert (tmp_path / "base" / "data.json").read_text() == before


def test_a_finetune_resume_keeps_its_split(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    finetune_run(run_dir, out)
    code, err = run_cli(
        capsys,
        "finetune",
        str(run_dir / "best_arch.json"),
        "--epochs",
        "2",
        "--resume",
        "--split-seed",
        "9",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 2 and "resume with the same --split/--split-seed" in err
