"""The search loop with a cheap deterministic evaluator: determinism, persistence, resume, failures."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.budget import Budget
from acp.errors import UserError
from acp.prune import build_space
from acp.search import store
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import SearchSettings, parse_duration

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "accuracy", "loss", "status")


@pytest.fixture(scope="module")
def space():
    return build_space(IDENTITY, {})[1]


def make_study(space, run_dir, *, evaluator=None, proposal=True, **overrides):
    options = {"particles": 6, "iterations": 5, "seed": 3, **overrides}
    settings = SearchSettings(**options)
    evaluator = evaluator or SyntheticEvaluator(space, identity=IDENTITY)
    proposal_widths = space.uniform_widths(0.6) if proposal else None
    return Study(
        space, evaluator, Budget(space, flops=0.5), settings, run_dir, proposal_widths=proposal_widths
    )


def history(run_dir) -> list[tuple]:
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    return [tuple(str(row[key]) for key in COMPARED) for row in rows]


def best_arch(run_dir) -> Architecture:
    return Architecture.load(run_dir / "best_arch.json")


@pytest.fixture(scope="module")
def reference(space, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = make_study(space, run_dir).run()
    return run_dir, result


def test_run_directory_and_result(reference, space):
    run_dir, result = reference
    for name in ("history.sqlite", "checkpoint.json", "checkpoint.prev.json", "best_arch.json", "report.png"):
        assert (run_dir / name).is_file(), name
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    assert len(rows) == 30 == result.evaluations
    assert [(r["iteration"], r["particle"]) for r in rows] == [(i, p) for i in range(5) for p in range(6)]
    assert all(r["macs"] <= 0.5 * space.base_macs for r in rows)
    assert all(r["status"] == "ok" for r in rows)
    best_row = max(rows, key=lambda r: r["score"])
    assert result.best["score"] == best_row["score"] and result.best["widths"] == best_row["widths"]
    arch = best_arch(run_dir)
    assert list(arch.widths.values()) == best_row["widths"]
    assert arch.provenance["source"] == "search" and arch.provenance["proxy_score"] == best_row["score"]
    assert result.best_per_iteration == sorted(result.best_per_iteration)
    assert result.stopped == "iterations"


def test_initial_swarm_holds_the_repaired_proposal_and_the_uniform_baseline(reference, space):
    run_dir, result = reference
    rows = store.History(run_dir / store.HISTORY_FILE).rows()
    budget = Budget(space, flops=0.5)
    proposal_ratios = space.uniform_widths(0.6) / space.full_widths()
    assert rows[0]["widths"] == budget.repair(proposal_ratios).tolist()
    assert rows[1]["widths"] == budget.repair(np.ones(len(space.groups))).tolist()
    assert result.proposal["widths"] == rows[0]["widths"] and result.uniform["widths"] == rows[1]["widths"]


def test_same_seed_same_run_bit_for_bit(reference, space, tmp_path):
    run_dir, _ = reference
    make_study(space, tmp_path / "again").run()
    assert history(tmp_path / "again") == history(run_dir)
    assert best_arch(tmp_path / "again").content_equal(best_arch(run_dir))
    make_study(space, tmp_path / "other", seed=4).run()
    assert history(tmp_path / "other") != history(run_dir)


class Interrupting:
    """Evaluator wrapper that raises KeyboardInterrupt (Ctrl-C) on its n-th call."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    def evaluate(self, widths):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return self.inner.evaluate(widths)

    def architecture(self, *args, **kwargs):
        return self.inner.architecture(*args, **kwargs)


def test_ctrl_c_then_resume_equals_uninterrupted(reference, space, tmp_path):
    run_dir, _ = reference
    target = tmp_path / "run"
    evaluator = Interrupting(SyntheticEvaluator(space, identity=IDENTITY), after=16)
    with pytest.raises(KeyboardInterrupt):
        make_study(space, target, evaluator=evaluator).run()
    assert len(history(target)) == 12  # iterations 0 and 1; iteration 2 was cut short and not recorded
    result = make_study(space, target).run(resume=True)
    assert history(target) == history(run_dir)
    assert best_arch(target).content_equal(best_arch(run_dir))
    assert result.evaluations == 30


def test_failed_checkpoint_write_keeps_the_previous_one_and_resume_has_no_duplicates(
    reference, space, tmp_path, monkeypatch
):
    run_dir, _ = reference
    target = tmp_path / "run"
    real_write, calls = store.write_checkpoint, []

    def failing_write(directory, state):
        calls.append(state["study"]["iteration"])
        if state["study"]["iteration"] == 3:  # after iteration 2's rows were committed
            raise OSError(28, "No space left on device")
        return real_write(directory, state)

    monkeypatch.setattr(store, "write_checkpoint", failing_write)
    with pytest.raises(OSError, match="No space left"):
        make_study(space, target).run()
    monkeypatch.setattr(store, "write_checkpoint", real_write)
    assert store.read_checkpoint(target)["study"]["iteration"] == 2
    assert len(history(target)) == 18  # iteration 2's rows are there, the checkpoint does not cover them
    make_study(space, target).run(resume=True)
    assert history(target) == history(run_dir)


def test_corrupted_checkpoint_falls_back_to_the_previous_one(reference, space, tmp_path, caplog):
    run_dir, _ = reference
    target = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_study(
            space, target, evaluator=Interrupting(SyntheticEvaluator(space, identity=IDENTITY), 22)
        ).run()
    path = target / store.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:-40])  # truncated
    logger = logging.getLogger("acp.search.store")  # pyswarms' logging setup can stop propagation
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="acp.search.store"):
            make_study(space, target).run(resume=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert "fails its checksum" in caplog.text and "using the previous checkpoint" in caplog.text
    assert history(target) == history(run_dir)


def test_corrupted_history_is_a_user_error(reference, space, tmp_path):
    target = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        make_study(
            space, target, evaluator=Interrupting(SyntheticEvaluator(space, identity=IDENTITY), 10)
        ).run()
    (target / store.HISTORY_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="history.sqlite is corrupted or not an acp history database"):
        make_study(space, target).run(resume=True)


def test_no_valid_checkpoint_is_a_user_error(space, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    sqlite3.connect(target / store.HISTORY_FILE).close()
    with pytest.raises(UserError, match="no valid search checkpoint to resume from"):
        make_study(space, target).run(resume=True)


def test_resume_with_other_settings_is_a_user_error(reference, space):
    run_dir, _ = reference
    with pytest.raises(UserError, match=r"different configuration \(search.particles: run has 6, now 7\)"):
        make_study(space, run_dir, particles=7).run(resume=True)


def test_existing_run_without_resume_is_a_user_error(reference, space):
    run_dir, _ = reference
    with pytest.raises(UserError, match="already holds a search"):
        make_study(space, run_dir).run()


def test_failing_candidates_are_recorded_and_the_search_goes_on(space, tmp_path):
    evaluator = SyntheticEvaluator(space, identity=IDENTITY, fail_when=lambda widths: widths[0] % 2 == 1)
    result = make_study(space, tmp_path / "run", evaluator=evaluator).run()
    rows = store.History(tmp_path / "run" / store.HISTORY_FILE).rows()
    failed = [row for row in rows if row["status"] != "ok"]
    assert failed and result.failed == len(failed) and result.evaluations == 30
    assert all(row["status"].startswith("failed: RuntimeError: synthetic failure") for row in failed)
    assert all(row["score"] is None for row in failed)
    assert result.best["widths"][0] % 2 == 0


@pytest.mark.parametrize(
    "options",
    [
        {"topology": "ring", "neighbors": 2},
        {"topology": "von_neumann", "neighbors": 1, "particles": 13},
        {"boundary": "reflective", "velocity_strategy": "adjust"},
        {"boundary": "intermediate", "velocity_strategy": "invert"},
        {"boundary": "shrink", "velocity_strategy": "zero"},
        {"boundary": "periodic", "random_particles": 0},
    ],
)
def test_topologies_and_handlers_run_and_resume_exactly(space, tmp_path, options):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    make_study(space, whole, iterations=4, **options).run()
    wrapped = Interrupting(
        SyntheticEvaluator(space, identity=IDENTITY), after=2 * options.get("particles", 6) + 2
    )
    with pytest.raises(KeyboardInterrupt):
        make_study(space, cut, evaluator=wrapped, iterations=4, **options).run()
    make_study(space, cut, iterations=4, **options).run(resume=True)
    assert history(cut) == history(whole)


def test_patience_stops_the_search(space, tmp_path):
    result = make_study(space, tmp_path / "run", iterations=200, patience=2).run()
    assert result.stopped == "patience" and result.iterations < 200
    last = result.best_per_iteration
    assert last[-1] == last[-2] == last[-3]


def test_time_limit_stops_the_search(space, tmp_path):
    slow = SyntheticEvaluator(space, identity=IDENTITY, sleep=0.05)
    result = make_study(space, tmp_path / "run", evaluator=slow, iterations=100, time_limit="1s").run()
    assert result.stopped == "time_limit" and 1 <= result.iterations < 100


def test_settings_validation_messages():
    with pytest.raises(
        UserError, match=r"^\[search\]\.workers = 0 is not allowed \(expected a positive integer\)$"
    ):
        SearchSettings(workers=0)
    with pytest.raises(
        UserError, match="topology = 'pyramid' is not allowed .*'star', 'ring' or 'von_neumann'"
    ):
        SearchSettings(topology="pyramid")
    with pytest.raises(UserError, match=r"\[search\]\.boundary = 'random' is not allowed"):
        SearchSettings(boundary="random")
    assert parse_duration("8h") == 28800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(UserError, match="--time-limit: expected a duration like 8h"):
        parse_duration("soon")


def test_von_neumann_needs_enough_particles(space, tmp_path):
    with pytest.raises(UserError, match="needs at least 13 particles, got particles=6"):
        make_study(space, tmp_path / "run", topology="von_neumann", neighbors=1).run()
