"""Several budgets in one run: one set-up, one history, one search per budget -- each exactly the search a
single-budget run makes -- resumable bit-exactly after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import Architecture
from acp.models import create_model
from acp.search import store
from acp.settings import BudgetSettings, RunSettings
from acp.workflows import rundir

BUDGETS = "0.7,0.5,0.3"
LABELS = ["flops0.7", "flops0.5", "flops0.3"]
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "accuracy", "loss", "status")
# long enough per budget (4 iterations of 3) that a kill lands inside the second budget's search
CONFIG = TINY_SEARCH_CONFIG.replace("iterations = 2", "iterations = 4")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multi")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), directory / "weights.pt")
    (directory / "search.toml").write_text(CONFIG)
    return directory


def search(workspace: Path, out: Path, *flags: str) -> None:
    assert main(["search", str(workspace / "search.toml"), "--out", str(out), "--quiet", *flags]) == 0


def history_rows(run_dir: Path, budget: str | None = None) -> list[tuple]:
    history = store.History(run_dir / store.HISTORY_FILE, budget=budget)
    try:
        return [tuple(json.dumps(row[key]) for key in COMPARED) for row in history.rows()]
    finally:
        history.close()


def finalist_rows(run_dir: Path) -> set[tuple]:
    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        return {(json.dumps(row["widths"]), row["score"]) for row in history.finalists()}
    finally:
        history.close()


def widths(path: Path) -> list[int]:
    return [group.width for group in Architecture.load(path).groups]


@pytest.fixture(scope="module")
def multi_run(workspace):
    out = workspace / "multi"
    search(workspace, out, "--flops", BUDGETS)
    return out


def test_the_layout_of_a_multi_budget_run(multi_run):
    assert sorted(path.name for path in multi_run.iterdir()) == sorted(
        ["config.toml", "proposal.json", "history.sqlite", "report.html", *LABELS]
    )
    for label in LABELS:
        folder = multi_run / label
        assert {"best_arch.json", "checkpoint.json", "report.png"} <= {p.name for p in folder.iterdir()}
        arch = Architecture.load(folder / "best_arch.json")
        assert arch.budget["flops"] == float(label.removeprefix("flops"))
        assert arch.macs_ratio <= arch.budget["flops"]
    settings = rundir.read_run_settings(multi_run)
    assert settings.budget.flops == [0.7, 0.5, 0.3] and settings.budget.labels() == LABELS
    with sqlite3.connect(multi_run / "history.sqlite") as db:
        counts = db.execute("SELECT budget, COUNT(*) FROM evaluations GROUP BY budget ORDER BY MIN(id)")
        assert counts.fetchall() == [(label, 12) for label in LABELS]
    proposal = json.loads((multi_run / "proposal.json").read_text())
    assert list(proposal["widths"]) == LABELS  # one clustering proposal per budget, one set of rankings
    # a budget folder's architecture finds its run's settings, narrowed to its own budget
    near = rundir.run_settings_near(multi_run / "flops0.5" / "best_arch.json")
    assert near.budget == BudgetSettings(flops=0.5) and near.model == settings.model


def test_each_budget_equals_a_single_budget_run_with_the_same_seed(workspace, multi_run):
    for label in LABELS:
        single = workspace / f"single_{label}"
        search(workspace, single, "--flops", label.removeprefix("flops"))
        assert history_rows(multi_run, label) == history_rows(single), label
        assert widths(multi_run / label / "best_arch.json") == widths(single / "best_arch.json"), label
        multi_arch = json.loads((multi_run / label / "best_arch.json").read_text())
        single_arch = json.loads((single / "best_arch.json").read_text())
        for document in (multi_arch, single_arch):
            document["provenance"].pop("created")
        assert multi_arch == single_arch, label
        assert finalist_rows(single) <= finalist_rows(multi_run)


def test_kill_9_during_the_second_budget_then_resume_equals_uninterrupted(workspace, multi_run, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "acp",
        "search",
        str(workspace / "search.toml"),
        "--out",
        str(out),
        "--flops",
        BUDGETS,
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    second = out / LABELS[1]
    while True:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the second budget's search did not get going"
        try:
            if store.read_checkpoint(second)["study"]["iteration"] >= 1:
                break
        except Exception:
            pass
        time.sleep(0.01)
    time.sleep(0.05)  # inside an iteration of the second budget
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (out / LABELS[2]).exists() or not (out / LABELS[2] / "best_arch.json").exists()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    assert history_rows(out) == history_rows(multi_run)
    assert finalist_rows(out) == finalist_rows(multi_run)
    for label in LABELS:
        assert Architecture.load(out / label / "best_arch.json").content_equal(
            Architecture.load(multi_run / label / "best_arch.json")
        ), label
    # resuming the finished run repeats nothing
    before = (out / "history.sqlite").read_bytes()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    assert (out / "history.sqlite").read_bytes() == before


def test_a_resume_may_not_change_the_budgets(multi_run, capsys):
    assert main(["search", "--resume", str(multi_run), "--flops", "0.7,0.5", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "[budget].flops differs" in error and len(error.splitlines()) == 1


def test_budget_lists_in_a_config_and_on_the_command_line():
    document = {
        "model": {"name": "resnet8_cifar"},
        "budget": {"flops": [0.7, 1, 0.3], "params": 0.8},
    }
    budget = RunSettings.from_document(document).budget
    assert budget.is_multiple and budget.flops == [0.7, 1.0, 0.3]
    assert budget.labels() == ["flops0.7_params0.8", "flops1_params0.8", "flops0.3_params0.8"]
    assert [each.to_dict() for each in budget.each()][0] == {
        "flops": 0.7,
        "params": 0.8,
        "latency": None,
        "latency_ms": None,
    }
    assert not BudgetSettings(flops=0.5).is_multiple and BudgetSettings(flops=0.5).label == "flops0.5"
    assert BudgetSettings(flops=0.5).each() == [BudgetSettings(flops=0.5)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--flops", "0.7,1.5"], "--flops: expected a ratio in (0, 1], got '1.5'"),
        (["--flops", "0.7,0.5", "--params", "0.6,0.5,0.4"], "must be equally long"),
        (["--flops", "0.5,0.5"], "budget flops0.5 is listed twice"),
        (["--flops", "0.5,"], "--flops: expected a ratio in (0, 1], got ''"),
    ],
)
def test_bad_budget_lists_exit_2_with_one_line(workspace, tmp_path, capsys, flags, message):
    code = main(["search", str(workspace / "search.toml"), "--out", str(tmp_path / "x"), "--quiet", *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "x").exists()


def old_history(path: Path) -> Path:
    """A history.sqlite as acp wrote it before the budget column (and the finalists table): one row."""
    old_columns = ", ".join(f"{name} {kind}" for name, kind in store.COLUMNS if name != "budget")
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE evaluations (id INTEGER PRIMARY KEY, {old_columns})")
        db.execute(
            "INSERT INTO evaluations (iteration, particle, widths, score, status) "
            "VALUES (0, 0, '[4, 4]', 0.5, 'ok')"
        )
    db.close()
    return path


def test_a_history_from_before_the_budget_column_is_migrated(tmp_path):
    path = old_history(tmp_path / "history.sqlite")
    history = store.History(path)
    assert [(row["widths"], row["budget"]) for row in history.rows()] == [([4, 4], None)]
    history.add([{"iteration": 1, "particle": 0, "widths": [2, 2], "status": "ok"}])
    assert len(history) == 2 and history.budgets() == [None]
    history.close()
    view = store.History(path, budget="flops0.5")
    assert len(view) == 0 and view.rows() == []
    view.add([{"iteration": 0, "particle": 0, "widths": [3, 3], "status": "ok"}])
    assert [row["budget"] for row in view.rows()] == ["flops0.5"] and view.truncate(0) == 1
    assert len(store.History(path)) == 2


def test_warm_start_starts_particle_2_from_the_previous_budgets_winner(workspace, multi_run):
    import numpy as np

    from acp.core.budget import Budget
    from acp.prune import build_space
    from acp.search.encoding import KeepRatioEncoding

    warm_config = CONFIG.replace("[search]\n", "[search]\nwarm_start = true\n")
    (workspace / "warm.toml").write_text(warm_config)
    out = workspace / "warm"
    assert (
        main(["search", str(workspace / "warm.toml"), "--out", str(out), "--flops", BUDGETS, "--quiet"]) == 0
    )
    assert history_rows(out, LABELS[0]) == history_rows(multi_run, LABELS[0])  # the first has no neighbour
    arch = Architecture.load(out / LABELS[0] / "best_arch.json")
    _, space = build_space(arch.model, arch.space)
    encoding = KeepRatioEncoding(space)
    for previous, label in zip(LABELS, LABELS[1:]):
        winner = widths(out / previous / "best_arch.json")
        budget = Budget(space, flops=float(label.removeprefix("flops")))
        expected = budget.repair(encoding.encode(np.asarray([winner]))).tolist()[0]
        first = [row for row in history_rows(out, label) if row[0] == "0"]
        alone = [row for row in history_rows(multi_run, label) if row[0] == "0"]
        assert json.loads(first[2][2]) == expected, label
        assert first[:2] == alone[:2], label  # the proposal and the uniform particle are unchanged

    # a finished warm-started run extends on resume, though a longer first search may change its winner
    assert main(["search", "--resume", str(out), "--iterations", "6", "--quiet"]) == 0
    for label in LABELS:
        assert {int(row[0]) for row in history_rows(out, label)} == set(range(6)), label
        assert store.read_checkpoint(out / label)["study"]["iteration"] == 6


def test_a_reader_leaves_an_old_history_as_it_found_it(tmp_path):
    path = old_history(tmp_path / "history.sqlite")
    before = path.read_bytes()
    for history in (store.History(path, read_only=True), store.History(path, read_only=True, budget="x")):
        try:
            expected = [] if history.budget else [([4, 4], None, 0.5)]
            assert [(row["widths"], row["budget"], row["score"]) for row in history.rows()] == expected
            assert history.finalists() == [] and len(history) == len(expected)
            assert history.budgets() == [None]
        finally:
            history.close()
    assert path.read_bytes() == before
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:  # a read-only copy opens in SQLite's read-only mode (a root user could write it anyway)
        history = store.History(path, read_only=True)
        assert len(history.rows()) == 1
        history.close()
    finally:
        tmp_path.chmod(0o755)
    assert path.read_bytes() == before
