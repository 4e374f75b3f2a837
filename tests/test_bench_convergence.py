"""bench_convergence --quick: stages extend one search per engine; every stage's winner is finetuned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.shared
def test_quick_convergence_study_runs_and_resumes(tmp_path):
    shared_file("models", "resnet20_cifar10.pt")
    command = [sys.executable, str(BENCHMARKS / "bench_convergence.py"), "--quick", "--workers", "1"]
    command += ["--engines", "pso,random", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for engine in ("pso", "random"):
        small = json.loads((tmp_path / f"{engine}_seed0" / "stage6" / "stage.json").read_text())
        large = json.loads((tmp_path / f"{engine}_seed0" / "stage12" / "stage.json").read_text())
        assert (small["evaluations"], large["evaluations"]) == (6, 12)
        assert large["proxy_best"] >= small["proxy_best"]  # the later stage continues the earlier one
        assert (tmp_path / f"{engine}_seed0" / "stage12" / "finetune_seed0.json").is_file()
    assert "| pso | 12 |" in done.stdout and "| random | 12 |" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # all cached
    assert again.returncode == 0 and again.stdout.count("| pso |") == 2
