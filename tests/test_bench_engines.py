"""The engine benchmark's --quick mode runs end to end (every engine, every landscape)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_quick_mode_runs():
    for package in ("nevergrad", "optuna", "cma"):
        pytest.importorskip(package)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_engines.py"), "--quick", "--no-write"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| landscape | evaluations | pso | random | cma | de | ngopt | tpe |" in done.stdout
    for name in ("smooth", "multimodal", "noisy", "surrogate"):
        assert f"| {name} | 24 |" in done.stdout
