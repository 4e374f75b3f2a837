"""``acp search`` end to end with the real proxy evaluator on a tiny model (ResNet-8, 16x16 digits)."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli.search import register
from acp.core.architecture import Architecture
from acp.errors import UserError
from acp.models import create_model
from acp.search import store

CONFIG = TINY_SEARCH_CONFIG


def acp_search(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="acp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["search", *argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    directory = tmp_path_factory.mktemp("problem")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), directory / "weights.pt")
    path = directory / "search.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert acp_search(str(config), "--out", str(out), "--quiet") == 0
    return out


def test_search_writes_the_run_directory(finished_run, capsys):
    for name in (
        "config.toml",
        "proposal.json",
        "history.sqlite",
        "checkpoint.json",
        "best_arch.json",
        "report.png",
        "report.html",
    ):
        assert (finished_run / name).is_file(), name
    rows = store.History(finished_run / store.HISTORY_FILE).rows()
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows)
    finalists = store.History(finished_run / store.HISTORY_FILE).finalists()
    assert 1 <= len(finalists) <= 5 and len({str(row["widths"]) for row in finalists}) == len(finalists)
    winner = max(finalists, key=lambda row: row["score"])  # the re-ranked best, not the best proxy score
    arch = Architecture.load(finished_run / "best_arch.json")
    assert list(arch.widths.values()) == winner["widths"]
    assert arch.macs == winner["macs"] <= 0.5 * arch.base_macs
    assert arch.provenance["proxy_score"] == winner["proxy_score"] and arch.provenance["criterion"] == "l2"
    assert arch.provenance["finalist_score"] == winner["score"]
    assert arch.provenance["finalists"] == len(finalists)


def test_resume_of_a_finished_run_changes_nothing(finished_run, capsys):
    before = store.History(finished_run / store.HISTORY_FILE).rows()
    assert acp_search("--resume", str(finished_run), "--quiet") == 0
    assert store.History(finished_run / store.HISTORY_FILE).rows() == before
    assert "best (re-ranked)" in capsys.readouterr().out


def test_user_errors(config, finished_run, tmp_path):
    with pytest.raises(UserError, match="exists and is not empty"):
        acp_search(str(config), "--out", str(finished_run))
    with pytest.raises(UserError, match=r"\[search\].particles differs from the run's config.toml"):
        acp_search("--resume", str(finished_run), "--particles", "5")
    with pytest.raises(UserError, match="--workers must be >= 1, got 0"):
        acp_search(str(config), "--out", str(tmp_path / "new"), "--workers", "0")
    with pytest.raises(
        UserError, match=r"--flops 0.01 is infeasible: .* the minimum achievable --flops is 0\.\d+"
    ):
        acp_search(str(config), "--out", str(tmp_path / "new"), "--flops", "0.01")
    with pytest.raises(UserError, match="--time-limit: expected a duration"):
        acp_search(str(config), "--out", str(tmp_path / "new"), "--time-limit", "tomorrow")
    with pytest.raises(UserError, match="give --out DIR for a new run or --resume DIR"):
        acp_search(str(config))
    assert not (tmp_path / "new").exists()  # nothing half-written


def test_report_html_of_a_real_run_and_acp_report(finished_run, capsys):
    from acp.cli import main

    html = (finished_run / "report.html").read_text(encoding="utf-8")
    winner = Architecture.load(finished_run / "best_arch.json")
    assert "re-ranked winner" in html and "finalists re-scored; the winner was #" in html
    assert "<td>2 of 2</td>" in html and "finished</span>" in html and "finalist score" in html
    assert f"{winner.provenance['proxy_score']:.4f}" in html
    (finished_run / "report.html").unlink()
    assert main(["report", str(finished_run)]) == 0
    again = (finished_run / "report.html").read_text(encoding="utf-8")
    assert "<td>2 of 2</td>" in again and "re-ranked winner" in again and "[search]" in again
