"""acp search on a detection config: a torchvision detector on the generated shapes, scored by mAP@0.5,
the budget met exactly, and a resumed run bit-identical to an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import acp
from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.models import create_model
from acp.search import store
from acp.settings import load_settings

pytest.importorskip("torchmetrics.detection")

CONFIG = """
[model]
name = "ssdlite320_mobilenet_v3_large"
num_classes = 4
weights = "detector.pt"
input_size = [3, 320, 320]
kwargs = {{ width_mult = 0.5 }}

[task]
kind = "{kind}"

[data]
spec = "{spec}"
split = "random:0.1"

[budget]
flops = 0.5

[proxy]
calibration_batches = 2
calibration_batch_size = 4
eval_batch_size = 8
validation_images = 8
score = "map50"

[rerank]
finalists = 2
finetune_steps = 2
calibration_batches = 1
validation_images = 8

[search]
particles = 3
random_particles = 1
criterion = "l1"
"""
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "status")


def write_config(directory, *, kind: str = "auto", spec: str = "shapes:64"):
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("ssdlite320_mobilenet_v3_large", 4, width_mult=0.5)
    torch.save(model.state_dict(), directory / "detector.pt")
    path = directory / "detection.toml"
    path.write_text(CONFIG.format(kind=kind, spec=spec))
    return path


def history_rows(run_dir) -> list[tuple]:
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        return [tuple(json.dumps(row[key]) for key in COMPARED) for row in history.rows()]
    finally:
        history.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("detection")
    path = write_config(directory)
    result = acp.search(path, out=directory / "run", iterations=2)
    return path, directory / "run", result


def test_a_detection_search_scores_by_map_and_meets_the_budget(finished):
    path, run_dir, result = finished
    arch = Architecture.load(run_dir / "best_arch.json")
    assert arch.model.name == "ssdlite320_mobilenet_v3_large" and arch.model.num_classes == 4
    assert arch.macs <= 0.5 * arch.base_macs and arch.macs_ratio > 0.45  # repaired onto the budget
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    scores = [row["score"] for row in rows if row["status"] == "ok"]
    assert len(scores) == len(rows) == 6 and all(0.0 <= score <= 1.0 for score in scores)  # mAPs
    assert result.best["score"] in sorted(scores)[-2:]  # the re-ranked winner: one of the 2 finalists
    assert arch.preprocessing is None  # a detector normalizes its own inputs
    settings = load_settings(run_dir / "config.toml")
    assert settings.task.kind == "auto" and settings.proxy.score == "map50"


def test_a_resumed_detection_search_equals_the_uninterrupted_one(finished, tmp_path):
    path, run_dir, _ = finished
    acp.search(path, out=tmp_path / "cut", iterations=1)
    acp.search(resume=tmp_path / "cut", iterations=2)
    assert history_rows(tmp_path / "cut") == history_rows(run_dir)
    resumed = Architecture.load(tmp_path / "cut" / "best_arch.json")
    assert resumed.content_equal(Architecture.load(run_dir / "best_arch.json"))


def test_a_detector_with_classification_data_or_kind_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"\[task\]\.kind = 'classification', but .* is a torchvision box"):
        acp.search(write_config(tmp_path / "kind", kind="classification"), out=tmp_path / "k")
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"\[data\]\.spec: .* is not detection data"):
        acp.search(write_config(tmp_path / "spec", spec=str(images)), out=tmp_path / "s")
    assert not (tmp_path / "k").exists() and not (tmp_path / "s").exists()


def test_acp_cluster_proposes_a_detector_with_box_relevance(finished):
    path, _, _ = finished
    from acp.settings import ProposeSettings

    result = acp.propose(
        load_settings(path), ProposeSettings(images=8, criterion="box_relevance"), flops=0.5
    )
    arch = result.architecture
    assert arch.macs <= 0.5 * arch.base_macs and arch.preprocessing is None
    assert arch.provenance["criterion"] == "box_relevance"


def test_acp_eval_prints_the_map_and_exact_macs_of_a_pruned_and_a_base_detector(finished, capsys):
    from acp.cli import main

    path, run_dir, _ = finished
    arch = Architecture.load(run_dir / "best_arch.json")
    weights = str(path.parent / "detector.pt")
    assert main(["eval", str(run_dir / "best_arch.json"), "--weights", weights, "--data", "shapes:64"]) == 0
    pruned = capsys.readouterr().out.splitlines()
    assert pruned[0].endswith("on shapes:64 [val, 51 images]")  # the run's random:0.1 split
    assert pruned[1].startswith("mAP@0.5 ") and f"MACs {arch.macs:,}  params {arch.params:,}" in pruned[1]
    base = [
        "eval", "--model", "ssdlite320_mobilenet_v3_large", "--weights", weights, "--data", "shapes:64",
    ]
    assert main(base) == 2  # the registry's default width: these half-width weights do not fit
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "does not fit the model" in error


def test_acp_finetune_retrains_the_searched_detector_and_acp_eval_reads_it(finished, tmp_path, capsys):
    from acp.cli import main

    _, run_dir, _ = finished
    tuned = acp.finetune(
        run_dir / "best_arch.json", out_dir=tmp_path / "ft", epochs=1, batch_size=8, lr=0.01, threads=1,
        measure_latency_of_models=False,
    )
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["map50_after"] == tuned.metrics["map50_after"] and 0.0 <= metrics["map50_after"] <= 1.0
    assert metrics["macs"] == Architecture.load(run_dir / "best_arch.json").macs
    settings = load_settings(tmp_path / "ft" / "config.toml")
    assert settings.data.spec == "shapes:64" and settings.data.split == "random:0.1"  # not made a path
    assert main(["eval", str(tmp_path / "ft"), "--data", "shapes:64", "--threads", "1"]) == 0  # as trained
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith(f"mAP@0.5 {metrics['map50_after'] * 100:.2f}  ")  # the same images, the same mAP


def test_a_pruned_detector_exports_to_onnx_and_onnxruntime_runs_it(finished, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from acp.cli import main
    from acp.prune import onnx_detection_difference

    path, run_dir, _ = finished
    weights = str(path.parent / "detector.pt")
    best = str(run_dir / "best_arch.json")
    assert main(["prune", best, "--weights", weights, "--out", str(tmp_path / "p")]) == 0
    assert main(["export", str(tmp_path / "p"), "--onnx", str(tmp_path / "cli.onnx")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith(f"wrote {tmp_path / 'cli.onnx'} (input: image")
    assert "outputs: boxes, scores, labels" in printed

    session = onnxruntime.InferenceSession(str(tmp_path / "cli.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    image = torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(2))  # any size: resized inside
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape and len(scores) > 0
    assert (boxes[:, [0, 2]] <= 240 + 1e-3).all() and (boxes[:, [1, 3]] <= 200 + 1e-3).all()
    model = acp.load_pruned(tmp_path / "p")
    compared, difference = onnx_detection_difference(model, (3, 320, 320), tmp_path / "cli.onnx")
    assert compared == 0 or difference < 1e-2  # an untrained detector's scores tie: nothing to order


class FixedDetections(torch.nn.Module):
    """A stand-in detector whose detections are given (distinct scores, sorted like torchvision's)."""

    def __init__(self, boxes, scores):
        super().__init__()
        self.boxes, self.scores = boxes, scores

    def forward(self, images):
        labels = torch.ones(len(self.scores), dtype=torch.int64)
        return [{"boxes": self.boxes, "scores": self.scores, "labels": labels}]


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_the_onnx_detection_check_compares_the_top_detections_in_score_order(monkeypatch, shift):
    onnxruntime = pytest.importorskip("onnxruntime")
    from acp.prune import onnx_detection_difference

    boxes = torch.arange(48, dtype=torch.float32).reshape(12, 4)
    scores = torch.linspace(0.9, 0.3, 12)
    shuffled = np.random.default_rng(0).permutation(12)

    class Session:  # what onnxruntime returns: the same detections in another order, boxes shifted
        def __init__(self, *args, **kwargs):
            pass

        def run(self, outputs, feed):
            return [boxes.numpy()[shuffled] + shift, scores.numpy()[shuffled], np.ones(12, dtype=np.int64)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    model = FixedDetections(boxes, scores)
    if shift:
        with pytest.raises(RuntimeError, match="disagrees with PyTorch"):
            onnx_detection_difference(model, (3, 8, 8), "x.onnx")
    else:
        assert onnx_detection_difference(model, (3, 8, 8), "x.onnx") == (10, 0.0)


def test_acp_train_trains_a_detector_on_detection_data(tmp_path, capsys):
    from acp.cli import main

    out = tmp_path / "det"
    argv = ["train", "--model", "ssdlite320_mobilenet_v3_large", "--data", "shapes:64"]
    argv += ["--split", "random:0.9", "--epochs", "1", "--batch-size", "8", "--lr", "0.01", "--threads", "1"]
    argv += ["--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("trained ssdlite320_mobilenet_v3_large for 1 epochs: val mAP@0.5 ")
    model = json.loads((out / "model.json").read_text())
    assert model == {"name": "ssdlite320_mobilenet_v3_large", "num_classes": 4, "input_size": [3, 320, 320]}
    assert json.loads((out / "data.json").read_text())["split"]["method"] == "random:0.9"
    state = torch.load(out / "weights.pt", weights_only=True)
    assert create_model("ssdlite320_mobilenet_v3_large", 4).load_state_dict(state) is not None


def test_acp_run_searches_and_finetunes_a_detector(tmp_path, capsys):
    from acp.cli import main

    path = write_config(tmp_path / "run")
    path.write_text(
        path.read_text().replace(
            "[search]", "[finetune]\nepochs = 1\nbatch_size = 8\nlr = 0.01\nthreads = 1\n\n[search]"
        )
        + "iterations = 1\n"
    )
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "val mAP@0.5" in printed
    metrics = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    arch = Architecture.load(tmp_path / "out" / "best_arch.json")
    assert metrics["macs"] == arch.macs <= 0.5 * arch.base_macs and 0.0 <= metrics["map50_after"] <= 1.0
