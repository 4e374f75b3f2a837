"""`acp demo --task detection`: the whole pipeline on the generated shapes, from a detector trained from
scratch to a pruned, finetuned one that `acp eval` reads back; a bad --task is a one-line exit 2."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from acp.cli import main
from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.fileio import load_weights_into
from acp.models import create_model
from acp.models.detection import traced_network
from acp.prune import load_pruned
from acp.settings import load_settings
from acp.workflows.demo import DETECTION_DATA, DETECTION_KWARGS, DETECTION_MODEL, run_demo

pytest.importorskip("torchmetrics.detection")

FILES = (
    "base/weights.pt",
    "search/best_arch.json",
    "search/history.sqlite",
    "search/report.png",
    "pruned/arch.json",
    "pruned/weights.pt",
    "pruned/metrics.json",
    "pruned/config.toml",
    "demo_config.toml",
    "shapes.png",
)


def counted_macs(model, input_size) -> int:
    """MACs of the detector's network counted by Torch-Pruning on the module itself (not the cost model)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(traced_network(model).eval(), torch.zeros(1, *input_size))
    return int(macs)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "det"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--task", "detection", "--quick", "--quiet", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_quick_detection_demo_writes_the_run_and_prints_the_summary(quick_demo):
    out, printed = quick_demo
    for name in FILES:
        assert (out / name).is_file(), name
    assert not (out / "report.png").exists()  # one report, the search's
    assert printed.startswith("acp demo --task detection finished in ")
    for row in ("val mAP@0.5", "val mAP@[.5:.95]", "MACs", "params", "latency batch 1"):
        assert f"\n  {row} " in printed, row
    metrics = json.loads((out / "pruned" / "metrics.json").read_text())
    for key in ("base_map50", "map50_before", "map50_after", "base_map", "map_after"):
        assert 0.0 <= metrics[key] <= 1.0, key
    config = load_settings(out / "demo_config.toml")
    assert config.model.name == DETECTION_MODEL and config.model.kwargs == DETECTION_KWARGS
    assert config.task.kind == "detection" and config.data.spec == DETECTION_DATA
    assert config.proxy.score == "loss" and config.rerank.score == "loss" and config.budget.flops == 0.5
    assert metrics["recipe"] == config.finetune.to_schedule().to_dict()  # the recipe the config records
    assert main(["demo", "--task", "detection", "--quick", "--quiet", "--out", str(out)]) == 2  # no overwrite


def test_the_pruned_detectors_counted_macs_are_within_the_budget(quick_demo):
    out, _ = quick_demo
    arch = Architecture.load(out / "search" / "best_arch.json")
    assert arch.provenance["source"] == "search" and arch.model.kwargs == DETECTION_KWARGS
    input_size = tuple(arch.model.input_size)
    base = create_model(DETECTION_MODEL, num_classes=4, **DETECTION_KWARGS)
    load_weights_into(base, out / "base" / "weights.pt")
    pruned = load_pruned(out / "pruned")
    base_macs, pruned_macs = counted_macs(base, input_size), counted_macs(pruned, input_size)
    assert (base_macs, pruned_macs) == (arch.base_macs, arch.macs)  # the cost model was exact
    assert pruned_macs <= 0.5 * base_macs
    assert json.loads((out / "pruned" / "metrics.json").read_text())["macs"] == pruned_macs
    with torch.no_grad():
        (detections,) = pruned.eval()([torch.rand(3, 64, 64)])  # still a detector: images in, boxes out
    assert set(detections) == {"boxes", "scores", "labels"}


def test_acp_eval_reads_the_demos_pruned_detector(quick_demo, capsys):
    out, _ = quick_demo
    metrics = json.loads((out / "pruned" / "metrics.json").read_text())
    assert main(["eval", str(out / "pruned"), "--data", DETECTION_DATA, "--threads", "1"]) == 0
    header, figures = capsys.readouterr().out.splitlines()[:2]
    assert header.endswith(f"on {DETECTION_DATA} [val, {metrics['validation_images']} images]")  # its split
    assert figures.startswith(f"mAP@0.5 {metrics['map50_after'] * 100:.2f}  ")  # what the demo measured
    assert f"mAP@[.5:.95] {metrics['map_after'] * 100:.2f}  MACs {metrics['macs']:,}  " in figures


def test_a_bad_demo_task_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["demo", "--task", "segmentation", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--task" in error and "'segmentation'" in error and "detection" in error
    assert not out.exists()
    with pytest.raises(UserError, match=r"task must be one of classification, detection; got 'boxes'"):
        run_demo(out, task="boxes")
    assert not out.exists()


@pytest.mark.slow
def test_the_full_detection_demo_trains_a_detector_that_detects(tmp_path, capsys):
    """The default sizes (2-3.5 minutes on one core): the base detector trained from scratch finds the
    shapes, and the pruned one at half the MACs still does after finetuning."""
    out = tmp_path / "full"
    assert main(["demo", "--task", "detection", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "pruned" / "metrics.json").read_text())
    assert metrics["base_map50"] > 0.8 and metrics["map50_after"] > 0.7  # measured: 0.95 and 0.96
    assert metrics["base_map"] > 0.5 and metrics["map_after"] > 0.4
    assert metrics["macs"] <= 0.5 * metrics["base_macs"]
    assert "val mAP@[.5:.95]" in capsys.readouterr().out
