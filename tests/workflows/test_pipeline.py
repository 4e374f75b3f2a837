"""`acp run`: search then finetune in one directory; an interrupted finetune resumes without re-searching."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.models import create_model
from acp.prune import load_pruned

CONFIG = TINY_SEARCH_CONFIG + """
[finetune]
epochs = 1
batch_size = 32
lr = 0.05
"""


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
