"""A search under a latency budget, end to end (ResNet-8 on 16x16 digits), with a synthetic latency table
placed in the cache, so every prediction is known exactly: every candidate meets the budget, the
architecture records it, a resumed run predicts with its own copy of the table, and bad budgets are
one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.latency import load_or_build
from acp.latency.table import LatencyModel
from acp.models import create_model
from acp.search import store
from acp.settings import load_settings
from acp.testing import SyntheticMeter
from acp.workflows.latency import identity_document
from acp.workflows.problem import load_problem
from acp.workflows.search import search


def write_config(directory, budget: str, verify_winner: bool = False) -> tuple:
    """A latency-budgeted config with a synthetic table in its cache; the winner is measured on the real
    runtime only with ``verify_winner`` (the tests of that step replace the runtime)."""
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), directory / "weights.pt")
    text = TINY_SEARCH_CONFIG.replace("[budget]\nflops = 0.5\n", f"[budget]\n{budget}\n")
    text += f'\n[latency]\ngrid_points = 3\ncalibration_models = 4\ncache_dir = "{directory / "cache"}"\n'
    text += f"verify_winner = {str(verify_winner).lower()}\n"
    path = directory / "search.toml"
    path.write_text(text, encoding="utf-8")
    problem = load_problem(load_settings(path))
    latency, cached_at, _ = load_or_build(
        problem.model,
        problem.space,
        identity_document(problem.identity),
        problem.settings.latency,
        meter=SyntheticMeter(problem.space, overhead=0.001, layer_overhead=1e-4, per_million=0.001),
    )
    return path, problem, latency, cached_at


@pytest.fixture(scope="module")
def latency_problem(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("latency"), "latency = 0.6")


@pytest.fixture(scope="module")
def finished(latency_problem, tmp_path_factory):
    path, _, _, _ = latency_problem
    out = tmp_path_factory.mktemp("runs") / "run"
    return search(path, out=out), out


def test_every_candidate_meets_the_latency_budget(latency_problem, finished):
    _, problem, latency, _ = latency_problem
    result, out = finished
    rows = store.History(out / store.HISTORY_FILE).rows()
    widths = np.array([row["widths"] for row in rows])
    predicted = latency(widths)
    assert np.all(predicted <= 0.6 * latency.base_ms + 1e-12)
    assert np.median(predicted / (0.6 * latency.base_ms)) > 0.98  # repaired onto the budget, not far below it
    assert result.budget == {"flops": None, "params": None, "latency": 0.6, "latency_ms": None}


def test_the_architecture_records_the_latency_budget_and_prediction(latency_problem, finished):
    _, problem, latency, _ = latency_problem
    _, out = finished
    arch = Architecture.load(out / "best_arch.json")
    assert arch.budget["latency"] == 0.6 and arch.budget["latency_ms"] is None
    widths = np.array(list(arch.widths.values()))
    assert arch.latency == {
        "runtime": "torch",
        "batch_size": 1,
        "threads": 1,
        "cpu": latency.key["cpu"],
        "base_ms": latency.base_ms,
        "predicted_ms": float(latency(widths)),
    }
    assert arch.latency["predicted_ms"] <= 0.6 * arch.latency["base_ms"]
    assert Architecture.from_dict(json.loads((out / "best_arch.json").read_text())) == arch
    assert (out / "latency_table.json").is_file() and (out / "report.png").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")  # the cost/score plane has a latency panel
    assert "latency ms</th>" in html and f"{arch.latency['predicted_ms']:.3g}" in html
    from acp.workflows.report import regenerate_report  # `acp report`: the space rebuilt from config.toml

    page = regenerate_report(out, out=out / "again.html")
    again = page.read_text(encoding="utf-8")
    page.unlink()
    assert "latency ms</th>" in again and "could not be rebuilt" not in again


def test_resume_predicts_with_the_run_directorys_table(latency_problem, finished, tmp_path):
    path, _, _, cached_at = latency_problem
    _, fresh = finished
    out = tmp_path / "run"
    search(path, out=out, iterations=1)
    saved = cached_at.read_bytes()
    document = json.loads(saved)
    document["coefficients"][2] += 5.0  # the cache now holds a different table for the same key
    cached_at.write_text(json.dumps(document))
    try:
        search(resume=out, iterations=2)
    finally:
        cached_at.write_bytes(saved)
    assert results(out) == results(fresh)
    assert Architecture.load(out / "best_arch.json").content_equal(
        Architecture.load(fresh / "best_arch.json")
    )


def results(run_dir) -> list[dict]:
    """History rows without the wall time and worker of each evaluation."""
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    return [{k: v for k, v in row.items() if k not in ("seconds", "worker")} for row in rows]


def test_a_swapped_run_table_is_refused_on_resume(latency_problem, finished, tmp_path):
    _, fresh = finished
    out = tmp_path / "copy"
    shutil.copytree(fresh, out)
    document = json.loads((out / "latency_table.json").read_text())
    document["coefficients"][0] *= 1.01
    (out / "latency_table.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match="latency_table"):
        search(resume=out, iterations=3)


def test_mixed_budget_meets_both(tmp_path):
    path, problem, latency, _ = write_config(tmp_path, "latency = 0.8\nflops = 0.45")
    result = search(path, out=tmp_path / "run", iterations=1)
    rows = store.History(tmp_path / "run" / store.HISTORY_FILE).rows()
    assert all(row["macs"] <= 0.45 * problem.space.base_macs for row in rows)
    assert np.all(latency(np.array([row["widths"] for row in rows])) <= 0.8 * latency.base_ms + 1e-12)
    assert result.budget["flops"] == 0.45 and result.budget["latency"] == 0.8


def test_infeasible_latency_budget_is_exit_2_with_the_minimum(latency_problem, tmp_path, capsys):
    path, problem, latency, _ = latency_problem
    least = float(latency(problem.space.min_widths())) / latency.base_ms
    code = main(["search", str(path), "--out", str(tmp_path / "run"), "--latency", f"{least * 0.8:.4f}"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "is infeasible" in error and "minimum achievable is --latency" in error
    assert not (tmp_path / "run").exists()
    assert main(["search", str(path), "--out", str(tmp_path / "run"), "--latency-ms", "-3"]) == 2
    assert "--latency-ms: expected a positive number" in capsys.readouterr().err


def test_acp_latency_and_info_read_the_cached_table(latency_problem, capsys):
    path, problem, latency, cached_at = latency_problem
    assert main(["latency", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"latency table: {cached_at} (read from the cache)" in out
    assert f"{latency.base_ms:.3f} ms predicted" in out and "latency share" in out
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "latency at stake" in out and f"base {latency.base_ms:.3g} ms" in out


def test_serialized_run_table_equals_the_cached_one(latency_problem, finished):
    _, _, latency, _ = latency_problem
    _, out = finished
    stored = LatencyModel.from_dict(json.loads((out / "latency_table.json").read_text()))
    assert stored.to_dict() == latency.to_dict()


def test_finetune_records_the_measured_latency_on_the_budgets_runtime(finished, tmp_path):
    from acp.train.finetune import summary_rows
    from acp.workflows.finetune import finetune

    _, out = finished
    result = finetune(out / "best_arch.json", out_dir=tmp_path / "ft", epochs=1, progress=False)
    measured = json.loads((tmp_path / "ft" / "metrics.json").read_text())["latency_budget"]
    arch = Architecture.load(out / "best_arch.json")
    assert {key: measured[key] for key in ("runtime", "batch_size", "threads", "predicted_ms")} == {
        key: arch.latency[key] for key in ("runtime", "batch_size", "threads", "predicted_ms")
    }
    assert measured["budget"] == {"latency": 0.6, "latency_ms": None}
    assert measured["measured_ms"] > 0 and measured["measured_base_ms"] > 0
    assert measured["measured_ratio"] == pytest.approx(measured["measured_ms"] / measured["measured_base_ms"])
    assert result.arch.latency == arch.latency
    rows = summary_rows(json.loads((tmp_path / "ft" / "metrics.json").read_text()))
    assert any(row[0] == "latency (torch, batch 1)" and "predicted" in row[2] for row in rows)


class SlowerThanPredicted:
    """A runtime on which narrow models are relatively slower than the table says (measured = predicted
    ** 0.8): the searched winner misses a latency budget it was predicted to meet."""

    def __init__(self, latency):
        self.latency, self.calls = latency, 0

    def model_rounds(self, widths):
        self.calls += 1
        return np.asarray(self.latency(widths)) ** 0.8


def test_the_winner_is_measured_and_shrunk_onto_the_measured_budget(tmp_path, monkeypatch):
    from acp.workflows import latency as latency_workflow

    path, problem, latency, _ = write_config(tmp_path, "latency = 0.6", verify_winner=True)
    runtime = SlowerThanPredicted(latency)
    monkeypatch.setattr(latency_workflow, "winner_meter", lambda problem: runtime)
    result = search(path, out=tmp_path / "run", iterations=2)

    arch = Architecture.load(tmp_path / "run" / "best_arch.json")
    widths = np.array(list(arch.widths.values()))
    searched = np.array(result.best["widths"])
    assert arch.latency["searched_widths"] == searched.tolist()
    assert np.all(widths <= searched) and not np.array_equal(widths, searched)
    measured = runtime.model_rounds(np.vstack([problem.space.full_widths(), widths]))
    assert arch.latency["measured_ratio"] == pytest.approx(measured[1] / measured[0])
    assert arch.latency["measured_ratio"] <= 0.6 * 1.02 and arch.latency["measured_budget_met"] is True
    assert arch.latency["predicted_ms"] == pytest.approx(float(latency(widths)))
    assert arch.provenance["proxy_score"] != result.best["score"]  # the shrunk architecture, scored again
    assert result.architecture == arch and result.latency_check.shrunk
    assert any(line.startswith("shrunk to meet the measured budget") for line in result.summary_lines())

    calls = runtime.calls
    again = search(resume=tmp_path / "run")  # finished and already measured: nothing is timed again
    assert runtime.calls == calls and again.architecture == arch


def test_a_measured_record_must_be_whole(finished, tmp_path):
    _, out = finished
    document = json.loads((out / "best_arch.json").read_text())
    document["latency"]["measured_ms"] = 1.0
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=r"latency.*missing key 'base_measured_ms'"):
        Architecture.load(path)


def test_every_budget_of_a_latency_list_is_searched_and_its_winner_measured(tmp_path, monkeypatch):
    from acp.workflows import latency as latency_workflow

    path, problem, latency, _ = write_config(tmp_path, "latency = [0.8, 0.6]", verify_winner=True)
    runtime = SlowerThanPredicted(latency)
    monkeypatch.setattr(latency_workflow, "winner_meter", lambda problem: runtime)
    result = search(path, out=tmp_path / "run", iterations=1)

    assert list(result.results) == ["latency0.8", "latency0.6"]
    full = problem.space.full_widths()
    for label, limit in (("latency0.8", 0.8), ("latency0.6", 0.6)):
        rows = store.History(tmp_path / "run" / store.HISTORY_FILE, budget=label).rows()
        assert rows and np.all(
            latency(np.array([row["widths"] for row in rows])) <= limit * latency.base_ms + 1e-12
        )
        arch = Architecture.load(tmp_path / "run" / label / "best_arch.json")
        widths = np.array(list(arch.widths.values()))
        measured = runtime.model_rounds(np.vstack([full, widths]))
        assert arch.latency["measured_ratio"] == pytest.approx(measured[1] / measured[0])
        assert arch.latency["measured_ratio"] <= limit * 1.02 and arch.latency["measured_budget_met"] is True
        assert result.results[label].architecture == arch
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert page.count(", measured latency ") == 2  # each budget's winner cell, from its best_arch.json
    assert "latency0.8: " in page and "latency0.6: " in page  # both budgets' latency checks in the notes

    calls = runtime.calls
    search(resume=tmp_path / "run")  # finished, every winner measured: nothing is timed again
    assert runtime.calls == calls
