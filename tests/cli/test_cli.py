"""The real ``acp`` command in a subprocess: success paths and the exit-code contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acp.models import create_model


def run_acp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "acp", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``acp ARGS`` through the same entry point, without paying for a new interpreter."""
    from acp.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("acp: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    result = run_acp(
        "train",
        "--model",
        "resnet8_cifar",
        "--data",
        "digits:16",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.1",
        "--no-augment",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_weights_metrics_and_descriptions(trained_run):
    out, result = trained_run
    assert "trained resnet8_cifar for 2 epochs" in result.stdout
    for name in ("weights.pt", "checkpoint.pt", "metrics.json", "model.json", "data.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["final"]["val_accuracy"] > 0.5
    assert json.loads((out / "model.json").read_text()) == {
        "name": "resnet8_cifar",
        "num_classes": 10,
        "input_size": [3, 16, 16],
    }
    assert json.loads((out / "data.json").read_text())["split"]["method"] == "random:0.1"


def test_train_resume_continues_to_more_epochs(trained_run, tmp_path):
    out, _ = trained_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in out.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    result = run_acp(
        "train",
        "--model",
        "resnet8_cifar",
        "--data",
        "digits:16",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--lr",
        "0.1",
        "--no-augment",
        "--out",
        str(copy),
        "--resume",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert [e["epoch"] for e in json.loads((copy / "metrics.json").read_text())["epochs"]] == [1, 2, 3]


def test_eval_prints_accuracy_macs_and_params(trained_run, capsys):
    out, _ = trained_run
    result = run_in_process(
        capsys,
        "eval",
        "--model",
        "resnet8_cifar",
        "--weights",
        str(out / "weights.pt"),
        "--data",
        "digits:16",
        "--split",
        "val",
    )
    assert result.returncode == 0, result.stderr
    expected_params = sum(p.numel() for p in create_model("resnet8_cifar").parameters())
    assert f"params {expected_params:,}" in result.stdout
    accuracy = json.loads((out / "metrics.json").read_text())["final"]["val_accuracy"]
    assert f"top-1 accuracy {accuracy * 100:.2f}%" in result.stdout


def test_a_user_error_in_the_real_command_is_one_line_and_exit_2():
    assert_user_error(
        run_acp("eval", "--model", "resnt8_cifar", "--data", "digits"), "unknown model", "resnet8_cifar"
    )


def test_user_errors_exit_2_with_one_line(tmp_path, trained_run, capsys):
    out, _ = trained_run

    def run_acp(*args):
        return run_in_process(capsys, *args)

    assert_user_error(
        run_acp("eval", "--model", "resnt8_cifar", "--data", "digits"), "unknown model", "resnet8_cifar"
    )
    assert_user_error(
        run_acp(
            "eval", "--model", "resnet8_cifar", "--weights", str(tmp_path / "nope.pt"), "--data", "digits"
        ),
        "weights file not found",
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    assert_user_error(
        run_acp("eval", "--model", "resnet8_cifar", "--weights", str(garbage), "--data", "digits"),
        "not a loadable PyTorch checkpoint",
    )
    assert_user_error(
        run_acp(
            "eval", "--model", "resnet14_cifar", "--weights", str(out / "weights.pt"), "--data", "digits"
        ),
        "does not fit the model",
    )
    assert_user_error(
        run_acp(
            "eval",
            "--model",
            "resnet8_cifar",
            "--weights",
            str(out / "weights.pt"),
            "--data",
            str(tmp_path / "missing"),
        ),
        "data path not found",
    )
    assert_user_error(
        run_acp(
            "train",
            "--model",
            "resnet8_cifar",
            "--data",
            "digits",
            "--epochs",
            "0",
            "--out",
            str(tmp_path / "x"),
        ),
        "--epochs",
    )
    assert_user_error(
        run_acp("train", "--model", "resnet8_cifar", "--data", "digits", "--epochs", "1", "--out", str(out)),
        "not empty",
    )
    assert_user_error(
        run_acp("eval", "--model", "vgg16_bn_cifar", "--random-weights", "--data", "digits:16"),
        "do not fit the model",
    )


def test_weights_with_a_pickle_payload_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Payload()}, evil)
    assert_user_error(
        run_acp("eval", "--model", "resnet8_cifar", "--weights", str(evil), "--data", "digits"),
        "refuses to execute",
    )
    assert not marker.exists()


def test_train_is_reproducible_from_its_seed(tmp_path, capsys):
    """The initial weights follow --seed, not torch's global random state (which differs between calls)."""
    import torch

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
        "--no-augment",
        "--quiet",
    ]
    torch.manual_seed(1)
    assert run_in_process(capsys, *args, "--out", str(tmp_path / "a")).returncode == 0
    torch.manual_seed(2)
    assert run_in_process(capsys, *args, "--out", str(tmp_path / "b")).returncode == 0
    assert run_in_process(capsys, *args, "--seed", "5", "--out", str(tmp_path / "c")).returncode == 0
    a, b, c = (torch.load(tmp_path / name / "weights.pt", weights_only=True) for name in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
