"""`acp demo --quick`: the whole pipeline end to end on the embedded digits default."""

from __future__ import annotations

import json

import torch

from acp.cli import main
from acp.core.architecture import Architecture
from acp.prune import load_pruned
from acp.settings import load_settings


def test_quick_demo_runs_the_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val accuracy" in printed and "MACs" in printed and "latency batch 64" in printed
    for name in (
        "base/weights.pt",
        "search/best_arch.json",
        "search/history.sqlite",
        "search/report.png",
        "pruned/arch.json",
        "pruned/weights.pt",
        "pruned/metrics.json",
        "demo_config.toml",
        "digit.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "report.png").exists()  # one report, the search's
    arch = Architecture.load(out / "search" / "best_arch.json")
    assert arch.macs <= 0.5 * arch.base_macs
    assert arch.provenance["source"] == "search"
    metrics = json.loads((out / "pruned" / "metrics.json").read_text())
    assert metrics["macs"] == arch.macs
    assert metrics["val_accuracy_after"] > 0.5  # digits: the pruned, finetuned net is far above chance
    # demo_config.toml records the recipe the demo finetuned with, not defaults it did not use
    config = load_settings(out / "demo_config.toml")
    assert metrics["recipe"] == config.finetune.to_schedule().to_dict()
    recipe = metrics["recipe"]
    assert (recipe["epochs"], recipe["lr"], recipe["batch_size"]) == (1, 0.05, 32)
    model = load_pruned(out / "pruned").eval()
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 2  # never overwrites
    # the README's next step: finetune the demo's winner again, the recipe (epochs too) from its config
    again = tmp_path / "again"
    assert main(["finetune", str(out / "search" / "best_arch.json"), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "metrics.json").read_text())["epochs_trained"] == config.finetune.epochs
