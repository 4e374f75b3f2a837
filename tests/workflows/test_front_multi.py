"""A real multi-budget run (``acp search --flops 0.7,0.5,0.3``): ``acp report`` and ``acp front`` over all its
budgets, the front exported with each point's own budget, a run interrupted before its last budget, and
the finetuned winners ``acp run`` leaves (hand-written ``metrics.json``) printed and plotted."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sqlite3

import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.models import create_model
from acp.workflows.front import export_front, finetuned_points, plot_finetuned_curve, read_front
from acp.workflows.report import regenerate_report, run_space_and_budgets

LABELS = ("flops0.7", "flops0.5", "flops0.3")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("front_multi")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), directory / "weights.pt")
    (directory / "search.toml").write_text(TINY_SEARCH_CONFIG)
    run_dir = directory / "run"
    command = ["search", str(directory / "search.toml"), "--out", str(run_dir), "--flops", "0.7,0.5,0.3"]
    assert main([*command, "--quiet"]) == 0
    return run_dir


@pytest.fixture
def run_copy(multi_run, tmp_path):
    return shutil.copytree(multi_run, tmp_path / "run")


def budget_statuses(html: str) -> dict[str, str]:
    table = re.search(r'<table id="budgets-table">(.*?)</table>', html, re.S).group(1)
    rows = [
        re.findall(r"<td>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    ]
    return {cells[0]: re.sub(r"<[^>]+>", "", cells[2]).split(":")[0] for cells in rows}


def test_acp_report_of_a_multi_budget_run(multi_run, capsys):
    assert main(["report", str(multi_run)]) == 0
    html = (multi_run / "report.html").read_text(encoding="utf-8")
    assert budget_statuses(html) == dict.fromkeys(LABELS, "finished")
    assert "<td>3: 3 finished</td>" in html and html.count('<img alt="') == 3
    assert "every budget was searched" in html


def test_acp_report_rebuilds_the_space_of_a_multi_budget_run_when_it_needs_it(run_copy):
    space, budgets = run_space_and_budgets(run_copy)
    assert list(budgets) == list(LABELS) and [budget.flops for budget in budgets.values()] == [0.7, 0.5, 0.3]
    assert all(budget.space is space for budget in budgets.values())
    for label in LABELS:  # no best_arch.json to read the base costs from: the space gives them
        (run_copy / label / "best_arch.json").unlink()
    html = regenerate_report(run_copy).read_text(encoding="utf-8")
    assert "could not be rebuilt" not in html and budget_statuses(html) == dict.fromkeys(LABELS, "finished")
    macs = re.findall(
        r"<td>MACs &lt;= 50.0%</td><td>.*?</td><td>.*?</td><td>.*?</td><td>.*?</td><td>(.*?)</td>", html
    )
    assert macs and macs[0].endswith("%")  # a ratio of the base model's, not a count


def test_acp_front_of_a_multi_budget_run(multi_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "front"
    assert main(["front", str(multi_run), "--export", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(
        "(3 budgets: MACs <= 70.0%, MACs <= 50.0%, MACs <= 30.0%; ratios of the base model):"
    ), printed[0]
    optimal = int(printed[0].split()[0])
    assert printed[1].split()[:3] == ["#", "budget", "MACs"]
    rows = printed[2 : 2 + optimal]
    assert all(row.split()[1] in LABELS for row in rows)
    winners = printed[2 + optimal : 5 + optimal]
    assert [line.split(":")[0] for line in winners] == [
        f"winner ({label}/best_arch.json)" for label in LABELS
    ]
    assert printed[5 + optimal].startswith("plot: ") and (multi_run / "front.png").read_bytes()[:8] == PNG
    assert printed[6 + optimal] == f"exported {optimal} architectures to {out}"
    front = read_front(multi_run)
    for path in sorted(out.glob("front_*.json")):
        arch = Architecture.load(path)
        point = front.point_of([group.width for group in arch.groups])
        assert point is not None and point.on_front
        assert arch.budget["flops"] == float(point.budget.removeprefix("flops")) >= arch.macs_ratio


def test_the_export_gives_each_point_its_own_budget(multi_run, tmp_path):
    front = read_front(multi_run)
    assert front.labels == LABELS and {point.budget for point in front.points} == set(LABELS)
    chosen = {
        label: max((p for p in front.points if p.budget == label), key=lambda p: p.score) for label in LABELS
    }
    marked = [dataclasses.replace(point, on_front=point in chosen.values()) for point in front.points]
    paths = export_front(dataclasses.replace(front, points=marked), tmp_path / "out")
    budgets = {}
    for path in paths:
        arch = Architecture.load(path)
        point = front.point_of([group.width for group in arch.groups])
        budgets[point.budget] = arch.budget["flops"]
        assert arch.macs_ratio <= arch.budget["flops"] and arch.budget["params"] is None
    assert budgets == {"flops0.7": 0.7, "flops0.5": 0.5, "flops0.3": 0.3}


def test_a_run_interrupted_before_its_last_budget(run_copy, capsys):
    shutil.rmtree(run_copy / "flops0.3")
    with sqlite3.connect(run_copy / "history.sqlite") as db:
        db.execute("DELETE FROM evaluations WHERE budget = 'flops0.3'")
    db.close()
    assert main(["report", str(run_copy)]) == 0
    html = (run_copy / "report.html").read_text(encoding="utf-8")
    assert budget_statuses(html) == {"flops0.7": "finished", "flops0.5": "finished", "flops0.3": "waiting"}
    assert '<span class="stopped">not finished</span>' in html and "<td>3: 2 finished, 1 waiting</td>" in html
    capsys.readouterr()
    assert main(["front", str(run_copy)]) == 0
    printed = capsys.readouterr().out
    assert "winner (flops0.3/best_arch.json): none yet (not searched)" in printed
    assert "flops0.3 " not in printed.split("winner (")[0]  # no point of it on the front


def test_a_budget_whose_evaluations_all_failed_says_so(run_copy, capsys):
    (run_copy / "flops0.3" / "best_arch.json").unlink()
    with sqlite3.connect(run_copy / "history.sqlite") as db:
        failed = db.execute(
            "UPDATE evaluations SET score = NULL, status = 'failed' WHERE budget = 'flops0.3'"
        ).rowcount
    db.close()
    assert main(["front", str(run_copy)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"winner (flops0.3/best_arch.json): none (all {failed} evaluations failed; see report.html" in printed
    )


def write_metrics(folder, **metrics):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def finished_metrics(accuracy: float, macs_ratio: float) -> dict:
    return {
        "base_val_accuracy": 0.95,
        "val_accuracy_before": 0.2,
        "val_accuracy_after": accuracy,
        "base_macs": 1000,
        "macs": int(1000 * macs_ratio),
        "macs_ratio": macs_ratio,
        "base_params": 100,
        "params": int(100 * macs_ratio),
        "params_ratio": macs_ratio,
    }


def test_finetuned_winners_are_printed_and_plotted(run_copy, tmp_path, capsys):
    assert finetuned_points(run_copy) == []
    write_metrics(run_copy / "flops0.7" / "finetune", **finished_metrics(0.91, 0.698))
    write_metrics(run_copy / "flops0.5" / "finetune", **finished_metrics(0.88, 0.5))
    write_metrics(run_copy / "flops0.3" / "finetune", base_val_accuracy=0.95, epoch=2)  # still training
    points = finetuned_points(run_copy)
    assert [(p.budget, p.metric, p.score, p.macs_ratio, p.base_score) for p in points] == [
        ("flops0.7", "val accuracy", 0.91, 0.698, 0.95),
        ("flops0.5", "val accuracy", 0.88, 0.5, 0.95),
    ]
    capsys.readouterr()
    assert main(["front", str(run_copy)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert (
        "finetuned (flops0.7/finetune/metrics.json): val accuracy 91.00% at MACs 69.8%, params 69.8%"
        in printed
    )
    assert (
        "finetuned (flops0.5/finetune/metrics.json): val accuracy 88.00% at MACs 50.0%, params 50.0%"
        in printed
    )
    assert "base model: val accuracy 95.00% at MACs 100%, params 100%" in printed
    assert (run_copy / "front.png").read_bytes()[:8] == PNG
    curve = plot_finetuned_curve(points, tmp_path / "curve.png")
    assert curve == tmp_path / "curve.png" and curve.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left
    with pytest.raises(ValueError, match="no finetuned points"):
        plot_finetuned_curve([], tmp_path / "empty.png")

    # measured latencies (as the finetune times them) are printed, and plotted once every point has them
    from PIL import Image

    timed = {
        "latency_cpu": {
            "batch1": {"base_ms": 2.0, "pruned_ms": 1.6, "speedup": 1.25},
            "batch64": {"base_ms": 50.0, "pruned_ms": 25.0, "speedup": 2.0},
        }
    }
    write_metrics(run_copy / "flops0.7" / "finetune", **finished_metrics(0.91, 0.698), **timed)
    assert Image.open(plot_finetuned_curve(finetuned_points(run_copy), tmp_path / "one.png")).size == (
        600,
        400,
    )
    write_metrics(
        run_copy / "flops0.5" / "finetune",
        **finished_metrics(0.88, 0.5),
        latency_cpu={"batch1": {"speedup": 1.5}},
    )
    points = finetuned_points(run_copy)
    assert [p.speedups for p in points] == [((1, 1.25), (64, 2.0)), ((1, 1.5),)]
    assert Image.open(plot_finetuned_curve(points, tmp_path / "two.png")).size == (1100, 400)  # + latency
    assert main(["front", str(run_copy)]) == 0
    assert (
        "finetuned (flops0.7/finetune/metrics.json): val accuracy 91.00% at MACs 69.8%, params 69.8%; "
        "measured CPU speed-up 1.25x at batch 1, 2.00x at batch 64" in capsys.readouterr().out.splitlines()
    )

    (run_copy / "flops0.5" / "finetune" / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"flops0.5/finetune/metrics.json: unreadable"):
        finetuned_points(run_copy)
    write_metrics(run_copy / "flops0.5" / "finetune", val_accuracy_after=0.9)
    with pytest.raises(UserError, match=r"flops0.5/finetune/metrics.json: no 'macs' field"):
        finetuned_points(run_copy)


def test_a_single_budget_runs_finetuned_detector(tmp_path):
    metrics = {**finished_metrics(0.0, 0.4), "base_map50": 0.6, "map50_after": 0.45}
    del metrics["val_accuracy_after"], metrics["base_val_accuracy"]
    write_metrics(tmp_path / "finetune", **metrics)
    (point,) = finetuned_points(tmp_path)
    assert (point.budget, point.metric, point.score, point.base_score) == (None, "val mAP@0.5", 0.45, 0.6)
    assert point.score_text() == "45.00" and point.path == tmp_path / "finetune" / "metrics.json"
    assert plot_finetuned_curve([point], tmp_path / "curve.png").read_bytes()[:8] == PNG


def test_acp_front_rows_bounds_the_printout(multi_run, capsys):
    assert main(["front", str(multi_run), "--rows", "0"]) == 0
    every = capsys.readouterr().out.splitlines()
    total = int(every[0].split()[0])
    assert total > 3 and every[0].endswith("ratios of the base model):")
    on_front = {line.split()[1] for line in every[2 : 2 + total]}
    assert main(["front", str(multi_run), "--rows", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{total} Pareto-optimal")
    assert printed[0].endswith("; 3 of them, spread over it (--rows 0: all):")
    assert {line.split()[1] for line in printed[2:5]} == on_front  # every budget on the front is shown
    assert printed[5].startswith("winner (")
    assert main(["front", str(multi_run), "--rows", "-1"]) == 2


def test_acp_front_over_macs_alone(multi_run, capsys):
    assert main(["front", str(multi_run), "--rows", "0"]) == 0
    every = int(capsys.readouterr().out.split()[0])
    assert main(["front", str(multi_run), "--costs", "macs", "--rows", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[1:5] == ["Pareto-optimal", "(over", "macs", "against"]
    over_macs = int(printed[0].split()[0])
    assert 1 <= over_macs <= every
    macs = [float(line.split()[2].rstrip("%")) for line in printed[2 : 2 + over_macs]]
    scores = [float(line.split()[4]) for line in printed[2 : 2 + over_macs]]
    assert macs == sorted(macs) and scores == sorted(scores)  # over one cost: a rising staircase
    assert main(["front", str(multi_run), "--costs", "flops"]) == 2
    assert "--costs: expected some of macs,params,latency, got 'flops'" in capsys.readouterr().err
    assert main(["front", str(multi_run), "--costs", "latency"]) == 2
    assert "not searched under a latency budget" in capsys.readouterr().err


def test_acp_front_into_a_closed_pipe_stops_quietly(multi_run):
    import subprocess
    import sys

    reader = subprocess.Popen(
        [sys.executable, "-m", "acp", "front", str(multi_run), "--rows", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=multi_run,
    )
    reader.stdout.close()  # like `acp front RUN | head -1`, closed before acp writes
    error = reader.stderr.read().decode()
    assert reader.wait(timeout=300) == 141, error
    assert "Traceback" not in error and "BrokenPipeError" not in error
