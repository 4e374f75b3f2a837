"""The comparison benchmarks: Torch-Pruning's row is faithful, and every --quick mode runs end to end."""

from __future__ import annotations

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
@pytest.mark.parametrize("script", ["bench_quality.py", "bench_latency.py"])
def test_quick_mode_runs(script, tmp_path):
    shared_file("models", "resnet20_cifar10.pt")
    extra = ["--out", str(tmp_path / "quality")] if script == "bench_quality.py" else []
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| method |" in done.stdout or "| base model |" in done.stdout
    if script == "bench_quality.py":
        for label in ("Torch-Pruning", "HRank", "random search", "DBSCAN", "--distill"):
            assert label in done.stdout
        saved = sorted((tmp_path / "quality_quick").glob("flops*/*/seed0/weights.pt"))
        assert len(saved) == 2 * 8  # every method at both budgets
