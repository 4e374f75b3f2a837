"""``acp report RUN`` regenerates RUN/report.html; a directory that is not a search run: exit 2, one line."""

from __future__ import annotations

import pytest

from acp.cli import main
from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.prune import build_space
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import SearchSettings

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    space = build_space(IDENTITY, {})[1]
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    settings = SearchSettings(particles=4, iterations=2, seed=0)
    evaluator = SyntheticEvaluator(space, identity=IDENTITY)
    Study(space, evaluator, Budget(space, flops=0.5), settings, run_dir).run()
    return run_dir


def test_report_regenerates_the_page(run_dir, capsys):
    assert not (run_dir / "report.html").exists()  # a bare Study writes none: the workflow's hook does
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "finished</span>" in html and "<td>8 (0 failed)</td>" in html
    assert "No config.toml in the run directory." in html
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.html'}"


@pytest.mark.parametrize(
    ("files", "missing"),
    [((), "history.sqlite"), (("history.sqlite",), "checkpoint.json")],
)
def test_not_a_run_directory_is_exit_2_in_one_line(tmp_path, capsys, files, missing):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"no {missing} there" in lines[0] and str(tmp_path) in lines[0], captured.err
    assert not (tmp_path / "report.html").exists()


def test_a_missing_directory_is_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_report_out_writes_elsewhere(run_dir, tmp_path):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "page.html")]) == 0
    assert "finished</span>" in (tmp_path / "page.html").read_text(encoding="utf-8")
