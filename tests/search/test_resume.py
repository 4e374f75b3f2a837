"""A search killed with SIGKILL at any moment resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acp.core.architecture import Architecture
from acp.search import store

SCRIPT = """
import sys
from acp.core.architecture import ModelIdentity
from acp.prune import build_space
from acp.core.budget import Budget
from acp.settings import SearchSettings
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator

identity = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
space = build_space(identity, {})[1]
settings = SearchSettings(particles=4, iterations=6, seed=7, workers=int(sys.argv[3]))
evaluator = SyntheticEvaluator(space, identity=identity, sleep=float(sys.argv[2]))
study = Study(space, evaluator, Budget(space, flops=0.4), settings, sys.argv[1],
              proposal_widths=space.uniform_widths(0.5))
study.run(resume=len(sys.argv) > 4)
"""
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "status")


def run_script(run_dir: Path, sleep: float = 0.0, workers: int = 1, resume: bool = False, wait: bool = True):
    command = [sys.executable, "-c", SCRIPT, str(run_dir), str(sleep), str(workers)] + (
        ["resume"] if resume else []
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    return process


def rows(run_dir: Path) -> list[tuple]:
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        return [tuple(json.dumps(row[key]) for key in COMPARED) for row in history.rows()]
    finally:
        history.close()


def completed_iterations(run_dir: Path) -> int:
    try:
        return store.read_checkpoint(run_dir)["study"]["iteration"]
    except Exception:
        return -1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run_script(run_dir)
    return run_dir


@pytest.mark.parametrize("after_iterations", [2])
def test_kill_9_mid_iteration_then_resume_equals_uninterrupted(uninterrupted, tmp_path, after_iterations):
    run_dir = tmp_path / "run"
    process = run_script(run_dir, sleep=0.15, wait=False)
    deadline = time.monotonic() + 300
    while completed_iterations(run_dir) < after_iterations:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the search did not get going"
        time.sleep(0.02)
    time.sleep(0.3)  # inside the next iteration: some evaluations done, none recorded
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert 0 < completed_iterations(run_dir) < 6
    run_script(run_dir, resume=True)
    assert rows(run_dir) == rows(uninterrupted)
    assert Architecture.load(run_dir / "best_arch.json").content_equal(
        Architecture.load(uninterrupted / "best_arch.json")
    )


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 1.3, 2.1, 3.4])
def test_kill_9_at_various_moments_with_workers(uninterrupted, tmp_path, delay):
    run_dir = tmp_path / "run"
    process = run_script(run_dir, sleep=0.1, workers=2, wait=False)
    while completed_iterations(run_dir) < 0:
        assert process.poll() is None
        time.sleep(0.02)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    run_script(run_dir, resume=True, workers=2)
    assert rows(run_dir) == rows(uninterrupted)


def test_the_workers_of_a_killed_search_end_with_it(tmp_path):
    psutil = pytest.importorskip("psutil")
    process = run_script(tmp_path / "run", sleep=0.1, workers=2, wait=False)
    deadline = time.monotonic() + 300
    while completed_iterations(tmp_path / "run") < 1:  # the workers have evaluated
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the search did not get going"
        time.sleep(0.05)
    workers = [
        child
        for child in psutil.Process(process.pid).children(recursive=True)
        if "loky" in " ".join(child.cmdline())
    ]
    assert len([w for w in workers if "LokyProcess" in " ".join(w.cmdline())]) == 2
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)  # no worker holds its pipes open
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], [w.cmdline() for w in alive]
