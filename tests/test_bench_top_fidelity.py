"""bench_top_fidelity.py --quick runs end to end: candidates, ground truth, every variant, timing, report.

~40-100 s, most of it decoding the shared CIFAR-10 images into the session's private cache (once per
session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import shared_file

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_mode_runs_and_caches(tmp_path):
    shared_file("models", "resnet20_cifar10.pt")
    shared_file("data", "cifar10", "train")
    work = tmp_path / "work"
    command = [
        sys.executable,
        str(BENCHMARKS / "bench_top_fidelity.py"),
        "--quick",
        "--no-write",
        "--work",
        str(work),
        "--stages",
        "recal,truth0,steps,timing,truth1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| proxy variant | Spearman top |" in done.stdout
    assert "Noise ceiling" in done.stdout
    variants = [json.loads(line) for line in (work / "recal.jsonl").read_text().splitlines()]
    assert len((work / "steps.jsonl").read_text().splitlines()) == 4
    truths = [json.loads(line) for line in (work / "truth.jsonl").read_text().splitlines()]
    assert len(variants) == 4 and len(truths) == 8  # 3 top + 1 reference, seeds 0 and 1
    # the snapshot passes reproduce real ProxyEvaluator evaluations (the timing stage compares them)
    timing = [json.loads(line) for line in (work / "timing.jsonl").read_text().splitlines()]
    assert timing and all(record["loss_diff"] < 1e-4 and record["correct_diff"] == 0 for record in timing)
