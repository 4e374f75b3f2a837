"""A weights path that names no file is exit 2 with one line naming the file, in every command that reads
weights -- never a warning and a confident answer about a randomly initialized network. Random weights
only when asked for (``--random-weights``), or for ``acp info MODEL_NAME``, whose table needs none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acp.core.architecture import ModelIdentity
from acp.models import create_model
from acp.prune import build_space
from acp.testing import random_architecture

CONFIG = """[model]
name = "resnet8_cifar"
num_classes = 10
{weights}input_size = [3, 16, 16]

[data]
spec = "digits:16"

[budget]
flops = 0.5

[search]
particles = 2
iterations = 1
random_particles = 0

[proxy]
calibration_batches = 1
calibration_batch_size = 16
validation_images = 32
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("missing_weights")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), root / "base.pt")
    (root / "typo.toml").write_text(CONFIG.format(weights='weights = "bsae.pt"\n'), encoding="utf-8")
    (root / "unset.toml").write_text(CONFIG.format(weights=""), encoding="utf-8")
    identity = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
    _, space = build_space(identity)
    arch = random_architecture(space, identity, np.random.default_rng(3))
    (root / "lone").mkdir()  # an architecture with no run around it
    arch.save(root / "lone" / "arch.json")
    (root / "run").mkdir()  # an architecture beside a run's config.toml that names a missing file
    arch.save(root / "run" / "best_arch.json")
    (root / "run" / "config.toml").write_text(CONFIG.format(weights='weights = "../bsae.pt"\n'))
    return {"root": root}


def _args(files, argv: list[str], out_dir: Path | None = None) -> list[str]:
    """``{name}`` becomes a fixture path; ``{new...}`` an output path in ``out_dir`` (one per test)."""

    def path(match) -> str:
        name = match.group(1)
        return str((out_dir if name.startswith("new") and out_dir else files["root"]) / name)

    return [re.sub(r"\{([\w./]+)\}", path, arg) for arg in argv]


LONE = "{lone/arch.json}"
RUN_ARCH = "{run/best_arch.json}"
TYPO = "{bsae.pt}"
# (argv, the file or field the one-line message must name)
MISSING = {
    "info": (["info", "{typo.toml}"], "bsae.pt"),
    "cluster": (["cluster", "{typo.toml}", "--out", "{new.json}"], "bsae.pt"),
    "cluster (no weights configured)": (
        ["cluster", "{unset.toml}", "--out", "{new.json}"],
        "[model].weights",
    ),
    "search": (["search", "{typo.toml}", "--quiet", "--out", "{new_run}"], "bsae.pt"),
    "run": (["run", "{typo.toml}", "--out", "{new_run}"], "bsae.pt"),
    "latency": (["latency", "{typo.toml}", "--quiet"], "bsae.pt"),
    "train --weights": (
        ["train", "--model", "resnet8_cifar", "--data", "digits:16", "--epochs", "1", "--weights", TYPO]
        + ["--out", "{new_dir}"],
        "bsae.pt",
    ),
    "finetune --weights": (
        ["finetune", LONE, "--weights", TYPO, "--data", "digits:16", "--epochs", "1", "--out", "{new_dir}"],
        "bsae.pt",
    ),
    "finetune (the run's weights)": (
        ["finetune", RUN_ARCH, "--epochs", "1", "--out", "{new_dir}"],
        "bsae.pt",
    ),
    "prune --weights": (["prune", LONE, "--weights", TYPO, "--out", "{new_dir}"], "bsae.pt"),
    "prune (the run's weights)": (["prune", RUN_ARCH, "--out", "{new_dir}"], "bsae.pt"),
    "prune (no weights anywhere)": (["prune", LONE, "--out", "{new_dir}"], "--weights"),
    "export --weights": (["export", LONE, "--weights", TYPO, "--onnx", "{new.onnx}"], "bsae.pt"),
    "eval --model --weights": (
        ["eval", "--model", "resnet8_cifar", "--weights", TYPO, "--data", "digits:16"],
        "bsae.pt",
    ),
    "eval ARCH --weights": (["eval", LONE, "--weights", TYPO, "--data", "digits:16"], "bsae.pt"),
    "eval --model (no weights)": (["eval", "--model", "resnet8_cifar", "--data", "digits:16"], "--weights"),
}


def _assert_one_line_exit_2(code: int, stderr: str, names: str) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("acp: error: "), stderr
    assert names in lines[0], lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", list(MISSING))
def test_missing_weights_are_exit_2_naming_the_file(files, capsys, monkeypatch, tmp_path, name):
    from acp.cli import main

    monkeypatch.chdir(tmp_path)  # cluster's default --out would land here
    argv, names = MISSING[name]
    code = main(_args(files, argv, tmp_path))
    _assert_one_line_exit_2(code, capsys.readouterr().err, names)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_real_cluster_command_refuses_a_mistyped_path(files, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "acp", *_args(files, MISSING["cluster"][0], tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _assert_one_line_exit_2(result.returncode, result.stderr, "bsae.pt")
    assert "--random-weights" in result.stderr  # the message says how to ask for random weights
    assert list(tmp_path.iterdir()) == []


def test_info_on_a_bare_model_name_needs_no_weights(capsys):
    from acp.cli import main

    assert main(["info", "resnet8_cifar"]) == 0
    assert "weights (random init)" in capsys.readouterr().out


def test_info_with_random_weights_asked_for(files, capsys):
    from acp.cli import main

    assert main(_args(files, ["info", "{typo.toml}", "--random-weights"])) == 0
    assert "weights (random init)" in capsys.readouterr().out


def test_cluster_with_random_weights_asked_for(files, capsys):
    from acp.cli import main

    out = files["root"] / "random_proposal.json"
    assert (
        main(
            _args(files, ["cluster", "{typo.toml}", "--random-weights", "--images", "32", "--out", str(out)])
        )
        == 0
    )
    assert "randomly initialized network (--random-weights)" in capsys.readouterr().out
    assert json.loads(out.read_text())["schema"] == "acp.architecture/1"


def test_prune_takes_the_runs_weights_or_random_ones_when_asked(files, capsys, tmp_path):
    from acp.cli import main
    from acp.prune import load_pruned

    assert main(_args(files, ["prune", LONE, "--random-weights", "--out", str(tmp_path / "r")])) == 0
    load_pruned(tmp_path / "r")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_arch.json").write_text((files["root"] / "run" / "best_arch.json").read_text())
    (run / "config.toml").write_text(CONFIG.format(weights=f'weights = "{files["root"] / "base.pt"}"\n'))
    assert main(["prune", str(run / "best_arch.json"), "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    code = main(
        _args(
            files, ["prune", LONE, "--random-weights", "--weights", "{base.pt}", "--out", "{new}"], tmp_path
        )
    )
    _assert_one_line_exit_2(code, capsys.readouterr().err, "not both")


def test_eval_of_random_weights_only_when_asked(capsys):
    from acp.cli import main

    assert main(["eval", "--model", "resnet8_cifar", "--random-weights", "--data", "digits:16"]) == 0
    assert "top-1 accuracy" in capsys.readouterr().out
