"""The comparison benchmarks: Torch-Pruning's row is faithful, and every --quick mode runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_file

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_quality():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_quality

        yield bench_quality
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_torch_pruning_row_is_exactly_what_torch_pruning_builds(bench_quality):
    """The channels read back from Torch-Pruning's MetaPruner (BatchNorm tagging) rebuild its pruned model
    exactly: same MACs, same outputs, and the budget is met."""
    from acp.core.architecture import ModelIdentity
    from acp.prune import build_space, materialize

    identity = ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {})
    torch.manual_seed(0)
    model, space = build_space(identity, {})
    model.eval()
    arch, steps = bench_quality.torch_pruning_architecture(model, identity, space, 0.7)
    reference, macs, reference_steps = bench_quality.torch_pruning_global(
        model, torch.zeros(1, 3, 32, 32), 0.7, tag=False
    )
    assert (arch.macs, steps) == (macs, reference_steps)
    assert arch.macs <= 0.7 * space.base_macs < space.base_macs * 0.72
    assert len({choice.width for choice in arch.groups}) > 1  # global pruning: widths differ per group
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(materialize(model, arch).eval()(images), reference(images))


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_latency.py"])
def test_quick_mode_runs(script, tmp_path):
    shared_file("models", "resnet20_cifar10.pt")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| base model |" in done.stdout


QUALITY_ROWS = ("uniform_l2", "tp_global", "proposal_l2", "random_l2", "acp")


@pytest.mark.slow
def test_bench_quality_quick_runs_every_default_row_and_resumes(tmp_path):
    """``bench_quality.py --quick`` takes every default row through choice, finetune and report (about
    1.5 CPU-minutes), and the same command run again reuses every saved search and finetune."""
    shared_file("models", "resnet20_cifar10.pt")
    command = [sys.executable, str(BENCHMARKS / "bench_quality.py"), "--quick", "--out", str(tmp_path / "q")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| row |" in done.stdout and "Verdict at 70% MACs" in done.stdout
    for label in ("uniform widths + l2", "Torch-Pruning", "clustering proposal + l2", "random search + l2"):
        assert label in done.stdout
    folder = tmp_path / "q_quick" / "flops0.7"
    for row in QUALITY_ROWS:
        assert (folder / row / "seed0" / "weights.pt").is_file(), row
    for row in ("acp", "random_l2"):  # the searched rows ran acp's search (history, re-ranked finalists)
        assert (folder / row / "search0" / "run" / "history.sqlite").is_file()
        choice = json.loads((folder / row / "search0" / "choice.json").read_text())
        assert choice["evaluations"] == 8 and choice["finalists"] == 2, choice
    again = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[70%]" not in again.stdout  # nothing chosen or finetuned again
    assert again.stdout.count("| **acp default**") == 1


def test_bench_latency_model_quick_runs_and_resumes(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "bench_latency_model.py"), "--quick", "--out", str(tmp_path)]
    command += ["--cache", str(tmp_path / "cache")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*-quick.json"))]
    assert [row["runtime"] for row in rows] == ["onnxruntime", "torch"]
    assert all(len(row["measured_ms"]) == len(row["predicted_ms"]) == 7 for row in rows)
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]


def test_bench_latency_search_quick_constraint_part_runs(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARKS / "bench_latency_search.py"),
        "--quick",
        "--out",
        str(tmp_path / "x"),
    ]
    command += ["--cache", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(next((tmp_path / "x").glob("constraint-*-quick.json")).read_text())
    assert [(row["budget_kind"], row["budget"]) for row in rows] == [
        ("latency", 0.7),
        ("flops", 0.7),
        ("latency", 0.5),
        ("flops", 0.5),
    ]
    assert all(
        row["predicted_median"] <= row["budget"] + 1e-9 for row in rows if row["budget_kind"] == "latency"
    )
    assert all(row["macs_median"] <= row["budget"] for row in rows if row["budget_kind"] == "flops")
    latency_rows = [row for row in rows if row["budget_kind"] == "latency"]
    assert all(row["checked_measurements_max"] >= 1 and "checked_worst" in row for row in latency_rows)


def test_bench_startup_quick_times_every_case_without_torch(tmp_path):
    """One repeat of each start-up case (under a second each): the table shows the saved "before" figures
    beside the new ones, and no case imports torch."""
    saved = tmp_path / "now.json"
    command = [sys.executable, str(BENCHMARKS / "bench_startup.py"), "--quick", "--no-write"]
    command += ["--json", str(saved), "--before", str(BENCHMARKS / "data" / "startup_before.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| `acp --help` | 4.84 |" in done.stdout  # the before column, from the saved figures
    figures = json.loads(saved.read_text())["figures"]
    assert len(figures) == 5 and not any(row["imports_torch"] for row in figures.values())


def test_bench_data_quick_reads_a_folder_cached_and_streamed(tmp_path):
    """40 generated 224-px JPEGs read as the cached array and streamed with 0, 1 and 2 workers (the script
    itself checks that every way gives the same batches); RESULTS.md is not touched."""
    shared_file("data", "cifar10", "train", "airplane", "0000.jpg")
    command = [sys.executable, str(BENCHMARKS / "bench_data.py"), "--quick", "--no-write"]
    command += ["--folder", str(tmp_path / "folder")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ways = ("cached array", "streamed, 0 loader workers", "streamed, 1 loader worker", "streamed, 2 loader")
    assert all(f"| {way}" in done.stdout for way in ways), done.stdout
    assert len(list((tmp_path / "folder").rglob("*.jpg"))) == 40


def test_bench_latency_search_quick_noise_part_prints_one_row_per_model(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "bench_latency_search.py"), "--quick", "--part", "noise"]
    command += ["--out", str(tmp_path / "x"), "--cache", str(tmp_path / "cache"), "--passes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| resnet8_cifar | latency = 0.7 |")]
    assert len(rows) == 1 and len(rows[0].split("|")[4].split(",")) == 2  # one median per pass


def test_bench_detection_proxy_quick_runs(tmp_path):
    pytest.importorskip("torchmetrics.detection")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_detection_proxy.py"), "--quick", "--no-write"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| map50 |", "| loss |"))]
    assert len(rows) == 2 and all(line.count(" s |") == 2 and "GB |" in line for line in rows)


@pytest.mark.slow
def test_bench_detection_and_its_fidelity_study_quick_runs(tmp_path):
    """Both detection benchmarks end to end on tiny sizes; the fidelity study reuses the cached base."""
    pytest.importorskip("torchmetrics.detection")
    out = tmp_path / "det"
    for script in ("bench_detection.py", "bench_detection_fidelity.py"):
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), "--no-write"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        if script == "bench_detection.py":
            acp_rows = [line for line in done.stdout.splitlines() if line.startswith("| **acp search**")]
            assert len(acp_rows) == 1 and "detection-loss proxy" in acp_rows[0]
            assert (out / "flops0.5" / "acp-loss" / "search0" / "choice.json").is_file()
        else:
            assert "base: cached" in done.stdout
            rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
            assert {"map50", "map", "loss"} <= {line.split("|")[1].strip() for line in rows}
