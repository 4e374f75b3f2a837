"""`acp run`: search then finetune in one directory; an interrupted finetune resumes without re-searching."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.models import create_model
from acp.prune import load_pruned

CONFIG = (
    TINY_SEARCH_CONFIG
    + """
[finetune]
epochs = 1
batch_size = 32
lr = 0.05
"""
)


@pytest.fixture
def config(tmp_path):
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "space.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_run_searches_then_finetunes_into_one_directory(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best (re-ranked)" in printed and "val accuracy" in printed
    for name in (
        "best_arch.json",
        "history.sqlite",
        "config.toml",
        "finetune/arch.json",
        "finetune/weights.pt",
        "finetune/metrics.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    arch = json.loads((out / "best_arch.json").read_text())
    assert metrics["macs"] == arch["macs"] <= 0.5 * arch["base_macs"]
    assert metrics["epochs_trained"] == 1
    assert load_pruned(out / "finetune").eval()(torch.zeros(1, 3, 16, 16)).shape == (1, 10)

    # resuming a finished run repeats nothing and changes nothing
    history = (out / "history.sqlite").read_bytes()
    weights = (out / "finetune" / "weights.pt").read_bytes()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "history.sqlite").read_bytes() == history
    assert (out / "finetune" / "weights.pt").read_bytes() == weights


def test_run_refuses_a_non_empty_directory_and_a_missing_run(config, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["run", str(config), "--out", str(tmp_path / "full"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "not an acp run directory" in capsys.readouterr().err


def test_run_over_several_budgets_finetunes_every_winner_and_draws_the_curve(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--flops", "0.7,0.4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "== flops0.7: the winner finetuned" in printed and "== flops0.4: the winner finetuned" in printed
    assert f"every budget and the base model: {out / 'curve.png'}" in printed
    assert (out / "curve.png").stat().st_size > 0
    for label, limit in (("flops0.7", 0.7), ("flops0.4", 0.4)):
        metrics = json.loads((out / label / "finetune" / "metrics.json").read_text())
        arch = json.loads((out / label / "best_arch.json").read_text())
        assert metrics["macs"] == arch["macs"] <= limit * arch["base_macs"]
        assert load_pruned(out / label / "finetune").eval()(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    assert main(["front", str(out)]) == 0
    front = capsys.readouterr().out
    assert "finetuned (flops0.7/finetune/metrics.json): val accuracy" in front and "base model: " in front

    # resuming the finished run repeats nothing
    history = (out / "history.sqlite").read_bytes()
    weights = (out / "flops0.4" / "finetune" / "weights.pt").read_bytes()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "history.sqlite").read_bytes() == history
    assert (out / "flops0.4" / "finetune" / "weights.pt").read_bytes() == weights


def test_run_takes_the_search_stop_flags_and_refuses_to_extend_a_finetuned_search(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--iterations", "1", "--seed", "3", "--quiet"]) == 0
    stored = (out / "config.toml").read_text()
    assert "iterations = 1" in stored and "seed = 3" in stored
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--iterations", "2", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "already finetuned" in error and "acp search --resume" in error and len(error.splitlines()) == 1
    assert main(["run", str(config), "--out", str(tmp_path / "other"), "--time-limit", "soon"]) == 2
    assert "time" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_a_budget_without_a_winner_does_not_stop_the_others_finetune(config, tmp_path, monkeypatch, caplog):
    import dataclasses

    from acp.workflows import search as search_workflow

    real = search_workflow.search

    def second_budget_all_failed(*args, **kwargs):  # as if every evaluation under flops0.4 had failed
        result = real(*args, **kwargs)
        result.results["flops0.4"] = dataclasses.replace(
            result.results["flops0.4"], best=None, proxy_best=None, finalists=[]
        )
        return result

    monkeypatch.setattr(search_workflow, "search", second_budget_all_failed)
    out = tmp_path / "run"
    flags = ["--flops", "0.7,0.4", "--iterations", "1", "--quiet"]
    assert main(["run", str(config), "--out", str(out), *flags]) == 0
    assert (out / "flops0.7" / "finetune" / "weights.pt").is_file()
    assert not (out / "flops0.4" / "finetune").exists() and (out / "curve.png").is_file()
    assert "budget flops0.4: every evaluation failed" in caplog.text
