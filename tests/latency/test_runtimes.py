"""Real runtimes: each one builds a (tiny) table that predicts a positive, monotone latency; a missing
runtime package is a one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util
import platform
import time

import numpy as np
import pytest
import torch

from acp.core.architecture import ModelIdentity
from acp.errors import UserError
from acp.latency import load_or_build
from acp.latency.allocator import steady_allocator
from acp.latency.runtimes import RUNTIMES, Timing, paired_ratios, prepare, require_runtime, time_rounds
from acp.latency.table import standalone_layer
from acp.prune import build_space
from acp.settings import LatencySettings


@pytest.fixture(scope="module")
def model_and_space():
    return build_space(ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {}), {"round_to": 4})


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_builds_a_table(model_and_space, tmp_path, runtime):
    if runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    model, space = model_and_space
    settings = LatencySettings(
        runtime=runtime,
        cache_dir=str(tmp_path),
        grid_points=2,
        calibration_models=3,
        rounds=1,
        min_seconds=0.0,
    )
    latency, path, from_cache = load_or_build(model, space, {"name": "resnet8_cifar"}, settings)
    assert path.is_file() and not from_cache
    assert latency.key["runtime"] == runtime and latency.key["threads"] == 1
    assert latency.base_ms > 0 and latency.base_measured_ms > 0
    assert float(latency(space.min_widths())) <= latency.base_ms
    assert len(latency.calibration) == 3 and latency.calibration[0]["widths"] == list(space.full_widths())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_standalone_layer_runs_at_every_width(model_and_space, runtime):
    if runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    _, space = model_and_space
    for layer in space.compute_layers:
        module, example = standalone_layer(layer, 4, 8, batch_size=2)
        prepare(runtime, module, example, threads=1)()


def test_prepared_torch_forward_matches_the_model(model_and_space):
    model, space = model_and_space
    example = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(example)
    np.testing.assert_allclose(prepare("torch", model, example, threads=1)(), expected, rtol=1e-5, atol=1e-6)


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install 'acp\[onnx\]'"):
        require_runtime("onnxruntime")


def test_unknown_runtime_is_refused():
    with pytest.raises(UserError, match="not one of torch, torchscript, onnxruntime"):
        require_runtime("tensorrt")


def test_acp_latency_measures_caches_and_suggests_a_round_to(tmp_path, capsys):
    from acp.cli import main

    config = tmp_path / "r8.toml"
    config.write_text(
        '[model]\nname = "resnet8_cifar"\nnum_classes = 10\ninput_size = [3, 16, 16]\n'
        "[latency]\ngrid_points = 2\ncalibration_models = 3\nrounds = 1\nmin_seconds = 0.0\n"
        f'cache_dir = "{tmp_path}"\n'
    )
    assert main(["latency", str(config), "--quiet", "--suggest-round-to"]) == 0
    out = capsys.readouterr().out
    assert "(measured in" in out and "suggested [space] round_to = " in out
    assert "1: +" in out and "4: +" in out and "8: +" not in out  # 16-channel groups: steps up to 16 // 4
    assert main(["latency", str(config), "--quiet"]) == 0
    assert "(read from the cache)" in capsys.readouterr().out
    assert main(["latency", str(config), "--quiet", "--runtime", "tensorrt"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_ratio_is_paired_by_round():
    rounds = np.array([[10.0, 20.0, 12.0], [5.0, 10.0, 7.2], [2.0, 8.0, 3.6]])
    assert paired_ratios(rounds) == pytest.approx([1.0, 0.5, 0.3])


def test_a_visit_keeps_its_fastest_forward():
    durations = iter([0.030, 0.010, 0.020] * 10)

    def call():
        end = time.perf_counter() + next(durations)
        while time.perf_counter() < end:
            pass

    figures = time_rounds([call], Timing(rounds=1, warmup=0, min_repeats=3, min_seconds=0.0), threads=1)
    assert figures.shape == (1, 1) and 10.0 <= figures[0, 0] < 15.0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_timing_fixes_the_glibc_malloc_thresholds_once():
    described = steady_allocator()
    assert described == "glibc mmap_threshold=33554432 trim_threshold=67108864"
    time_rounds([lambda: None], Timing(rounds=1, warmup=0, min_repeats=1, min_seconds=0.0), threads=1)
    assert steady_allocator() is described


def test_calls_that_hold_memory_are_released_after_every_visit():
    """time_rounds lets a call free its memory after its warm-up and after each visit, so the calls it
    interleaves never hold it all at once (ONNX Runtime sessions keep their arenas while they live)."""
    live, peak, events = set(), [0], []

    class HoldingCall:
        def __init__(self, name):
            self.name = name

        def __call__(self):
            live.add(self.name)
            peak[0] = max(peak[0], len(live))
            events.append(("run", self.name))

        def release(self):
            live.discard(self.name)
            events.append(("release", self.name))

    calls = [HoldingCall(i) for i in range(4)]
    timing = Timing(rounds=3, warmup=2, min_repeats=2, min_seconds=0.0)
    results = time_rounds(calls, timing, threads=1, seed=0)
    assert results.shape == (4, 3) and peak[0] == 1 and not live
    assert sum(1 for kind, _ in events if kind == "release") == 4 * (1 + 3)


def test_an_onnxruntime_call_opens_its_session_when_run_and_drops_it_on_release():
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    module = torch.nn.Conv2d(3, 4, 3)
    example = torch.randn(1, 3, 8, 8)
    call = prepare("onnxruntime", module, example, threads=1)
    assert call.session is None
    first = call()[0]
    assert call.session is not None
    call.release()
    assert call.session is None
    np.testing.assert_array_equal(call()[0], first)  # reopened: the same forward
    with torch.no_grad():
        np.testing.assert_allclose(first, module(example).numpy(), rtol=1e-4, atol=1e-5)


def test_standalone_inputs_share_one_pool_of_noise(model_and_space):
    """Hundreds of standalone calls are alive at once while they are timed: their inputs are views of one
    seeded pool, not tensors of their own."""
    from acp.latency.table import seeded_input

    _, space = model_and_space
    inputs = [standalone_layer(layer, 4, 8, batch_size=2)[1] for layer in space.compute_layers]
    big = seeded_input((3, 5, 7))
    again = seeded_input((3, 5, 7))
    assert torch.equal(big, again) and big.shape == (3, 5, 7)
    newest = seeded_input((2,))
    assert newest.untyped_storage().data_ptr() == again.untyped_storage().data_ptr()
    assert all(torch.isfinite(x).all() for x in inputs)
    assert len({x.untyped_storage().data_ptr() for x in inputs}) <= 2  # the pool, and at most one regrowth
