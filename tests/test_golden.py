"""Golden outputs: the ``acp`` command line must reproduce, bit for bit, what commit 43f758b wrote.

The scenarios, what they record and what they leave out are described in tests/golden/record.py, which
wrote tests/golden/*.json; these tests run the same commands (``python -m acp`` in subprocesses, in a
temporary directory, with OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 and the session's image cache) against
the acp this interpreter imports, and compare with the JSON exactly: every float bit for bit, every type.
The parent environment is passed through, so ``PYTHONPATH=DIR pytest tests/test_golden.py`` checks the
code in DIR.

The selected scenarios run at once, one process chain each (each process single-threaded): interpreter
start-up and ``import torch`` dominate them, and two cores take them in about half the time.

An intended change of results is re-recorded with ``python tests/golden/record.py``. The comparison is
bit for bit, so it is made only on the kind of CPU the files were recorded on (their ``recorded.cpu``,
record.cpu_kind()); on another kind the tests skip and say so (floating point differs across SIMD units).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SHARED, shared_file
from golden import record

SHARED_NEEDS = (("models", "resnet20_cifar10.pt"), ("data", "cifar10", "train"))
PREFIX = "test_golden_"
SHOWN_DIFFERENCES = 40


def _scenario_of(item) -> str | None:
    function = getattr(item, "function", None)
    if function is None or function.__module__ != __name__ or not function.__name__.startswith(PREFIX):
        return None
    return function.__name__[len(PREFIX) :]


def _timed(job, work):
    started = time.monotonic()
    return job(work), time.monotonic() - started


@pytest.fixture(scope="module")
def golden_runs(request, tmp_path_factory):
    """The scenarios of the selected tests, started together; scenario -> future of (result, seconds)."""
    selected = {_scenario_of(item) for item in request.session.items}
    wanted = [name for name in record.SCENARIOS if name in selected and _foreign_cpu(name) is None]
    if "resnet20" in wanted and not all(SHARED.joinpath(*parts).exists() for parts in SHARED_NEEDS):
        wanted.remove("resnet20")  # its test skips
    # the cache directory of conftest's private_cache: one per session, shared with the other tests
    env = record.acp_env(tmp_path_factory.getbasetemp() / "acp-cache")
    layout = record.load_golden("digits")["inputs"]["init_layout"]
    jobs = {
        "digits": lambda work: record.run_digits(work, env, layout),
        "resnet20": lambda work: record.run_resnet20(work, env, SHARED),
        "demo": lambda work: record.run_demo(work, env),
    }
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        works = {name: tmp_path_factory.mktemp(f"golden-{name}") for name in wanted}
        yield {name: pool.submit(_timed, jobs[name], works[name]) for name in wanted}


def _foreign_cpu(name: str) -> str | None:
    """Why ``name``'s golden file cannot be compared on this machine (another kind of CPU), or None."""
    recorded, here = record.load_golden(name)["recorded"].get("cpu"), record.cpu_kind()
    if recorded == here:
        return None
    return f"tests/golden/{name}.json was recorded on CPU kind {recorded!r}; this is {here!r}"


def _check(name: str, golden_runs) -> None:
    reason = _foreign_cpu(name)
    if reason is not None:
        pytest.skip(f"{reason}: floating point is bit-exact only on one kind of CPU")
    golden = record.load_golden(name)
    result, seconds = golden_runs[name].result()
    print(f"golden scenario {name}: {seconds:.1f} s")
    if "inputs" in golden:
        assert result["inputs"] == golden["inputs"], (
            "the initial weights made by record.write_initial_weights changed (a new torch RNG?): "
            "nothing acp does can match the golden files then; re-record them"
        )
    found = record.differences(golden["outputs"], result["outputs"])
    shown = "\n".join(found[:SHOWN_DIFFERENCES])
    more = f"\n... and {len(found) - SHOWN_DIFFERENCES} more" if len(found) > SHOWN_DIFFERENCES else ""
    assert not found, (
        f"{len(found)} differences from tests/golden/{name}.json (recorded on {record.RECORDED_COMMIT}):\n"
        f"{shown}{more}\nAn intended change is re-recorded with: python tests/golden/record.py --only {name}"
    )


def test_golden_digits(golden_runs):
    """acp train -> acp search -> acp finetune on 16x16 digits (ResNet-8)."""
    _check("digits", golden_runs)


@pytest.mark.shared
def test_golden_resnet20(golden_runs):
    """acp search on the shared ResNet-20 and CIFAR-10: proxy scores of two candidates."""
    for parts in SHARED_NEEDS:
        shared_file(*parts)
    _check("resnet20", golden_runs)


def test_golden_demo(golden_runs):
    """acp demo --quick."""
    _check("demo", golden_runs)
