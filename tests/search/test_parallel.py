"""Parallel evaluation gives the same search as a serial one; backend errors are user errors."""

from __future__ import annotations

import os
import time

import pytest

from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.errors import UserError
from acp.prune import build_space
from acp.search import store
from acp.search.backends import make_backend
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import SearchSettings

IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
COMPARED = ("iteration", "particle", "widths", "macs", "params", "score", "status")


@pytest.fixture(scope="module")
def space():
    return build_space(IDENTITY, {})[1]


def run(space, run_dir, sleep=0.0, **execution):
    settings = SearchSettings(particles=6, iterations=3, seed=1, **execution)
    evaluator = SyntheticEvaluator(space, identity=IDENTITY, fail_when=lambda w: w[1] == w[0], sleep=sleep)
    Study(space, evaluator, Budget(space, flops=0.5), settings, run_dir).run()
    return store.History(run_dir / store.HISTORY_FILE).rows()


def project(rows):
    return [tuple(row[key] for key in COMPARED) for row in rows]


@pytest.fixture(scope="module")
def serial_rows(space, tmp_path_factory):
    return run(space, tmp_path_factory.mktemp("serial") / "run")


def test_loky_workers_match_serial(space, tmp_path, serial_rows):
    rows = run(space, tmp_path / "run", workers=2)
    assert project(rows) == project(serial_rows)
    workers = {row["worker"] for row in rows}
    assert all(not name.endswith(f":{os.getpid()}") for name in workers)  # evaluated in worker processes


# a LocalCluster starts in ~10-40 s on 2 cores: worth it, this is the only end-to-end test of the Dask path
def test_dask_local_cluster_matches_serial(space, tmp_path, serial_rows):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        rows = run(space, tmp_path / "run", backend="dask", dask_scheduler=cluster.scheduler_address)
    assert project(rows) == project(serial_rows)


def test_dask_worker_killed_mid_evaluation_changes_nothing(space, tmp_path, serial_rows):
    """SIGKILL one of two Dask workers while it evaluates: its task is retried on the other worker (or on
    the one the nanny restarts) and the search ends with exactly the serial history."""
    distributed = pytest.importorskip("distributed")
    import signal
    import threading

    killed = threading.Event()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        address, victim = sorted(client.run(os.getpid).items())[0]

        def kill_when_busy():
            deadline = time.monotonic() + 120
            while not client.processing(workers=[address]).get(address) and time.monotonic() < deadline:
                time.sleep(0.01)  # wait until the victim is evaluating a candidate
            time.sleep(0.1)
            os.kill(victim, signal.SIGKILL)
            killed.set()

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        rows = run(
            space, tmp_path / "run", sleep=0.25, backend="dask", dask_scheduler=cluster.scheduler_address
        )
        killer.join()
    assert killed.is_set()
    assert project(rows) == project(serial_rows)


@pytest.mark.slow  # ray.init starts a local cluster (~10 s); Ray is an optional extra (acp[ray])
def test_ray_matches_serial(space, tmp_path, serial_rows):
    ray = pytest.importorskip("ray")
    try:
        rows = run(space, tmp_path / "run", backend="ray", workers=2)
    finally:
        ray.shutdown()
    assert project(rows) == project(serial_rows)
    workers = {row["worker"] for row in rows}
    assert all(not name.endswith(f":{os.getpid()}") for name in workers)  # evaluated in Ray worker processes


def test_unreachable_dask_scheduler_is_a_quick_user_error(space):
    pytest.importorskip("distributed")
    began = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 2 s"):
        make_backend(SyntheticEvaluator(space), dask_scheduler="tcp://127.0.0.1:9", scheduler_timeout=2)
    assert time.perf_counter() - began < 20


def test_workers_zero_is_a_user_error(space):
    with pytest.raises(UserError, match="--workers must be an integer >= 1, got 0"):
        make_backend(SyntheticEvaluator(space), workers=0)
