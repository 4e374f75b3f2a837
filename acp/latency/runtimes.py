"""Where a model runs, and how its forward pass is timed there on a shared, noisy machine.

Runtimes:

- ``torch``: PyTorch eager, eval mode, ``torch.inference_mode``, channels-last input;
- ``torchscript``: ``torch.jit.trace`` then ``torch.jit.freeze`` (BatchNorm folded into the convs);
- ``onnxruntime``: exported with the TorchScript-based ONNX exporter, run by ONNX Runtime's CPU provider
  with every graph optimization (needs the ``onnx`` extra: ``pip install 'acp[onnx]'``).

Timing (:func:`time_rounds`): a warm-up, then ``rounds`` rounds; each round visits every prepared call
once, in a fresh seeded order, and times enough consecutive forwards to fill ``min_seconds`` (at least
``min_repeats``); a visit's figure is the fastest of its forwards. Interleaving the calls means slow
drift of a shared machine hits all of them alike; the caller takes the minimum (or median) over rounds.
The minimum is the estimator of a forward's undisturbed time: on a 2-core VM, a candidate's measured
ratio to the base moved 0.04-0.12 between passes with the median of 0.2 s visits over 6 rounds and
0.02-0.05 with the fastest forward over 60 rounds (``benchmarks/RESULTS.md``, "Latency ratio noise");
many short rounds give the quiet moments of a shared machine more chances to be seen by every call.
A call that holds memory between runs (an ONNX Runtime session and its arena) is released after each
visit and reopened by the next, so a table's hundreds of calls never hold their memory at once.
Thread counts are pinned for the whole measurement, and glibc's malloc thresholds are fixed first
(:mod:`acp.latency.allocator`: otherwise one model measures at two latencies from pass to pass).
"""

from __future__ import annotations

import importlib.util
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acp.errors import UserError
from acp.latency.allocator import steady_allocator
from acp.threads import torch_threads

RUNTIMES = ("torch", "torchscript", "onnxruntime")
EXTRA_FOR = {"onnxruntime": ("onnxruntime", "onnx")}  # runtime -> (module to import, acp extra)


def require_runtime(runtime: str) -> None:
    """UserError naming the extra to install when the runtime's package is missing."""
    if runtime not in RUNTIMES:
        raise UserError(f"latency runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime in EXTRA_FOR:
        module, extra = EXTRA_FOR[runtime]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"latency runtime {runtime!r} needs the {module} package: pip install 'acp[{extra}]'"
            )


def runtime_version(runtime: str) -> str:
    """The version string a latency table measured on ``runtime`` depends on."""
    versions = [f"torch {torch.__version__}"]
    if runtime == "onnxruntime":
        import onnxruntime

        versions.append(f"onnxruntime {onnxruntime.__version__}")
    return ", ".join(versions)


def prepare(runtime: str, model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    """A no-argument call that runs one forward of ``model`` on ``example`` in ``runtime``.

    ``model`` is put in eval mode (TorchScript and ONNX Runtime work on their own copies).
    """
    require_runtime(runtime)
    model.eval()
    if runtime == "torch":
        example = example.contiguous(memory_format=torch.channels_last) if example.dim() == 4 else example

        def forward() -> object:
            with torch.inference_mode():
                return model(example)

        return forward
    if runtime == "torchscript":
        with warnings.catch_warnings(), torch.no_grad(), torch_threads(threads):
            warnings.simplefilter("ignore")
            scripted = torch.jit.freeze(torch.jit.trace(model, example))

        def forward_scripted() -> object:
            with torch.inference_mode():
                return scripted(example)

        return forward_scripted
    return _onnxruntime_call(model, example, threads)


def _onnxruntime_call(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            model, (example,), buffer, input_names=["input"], output_names=["output"], dynamo=False
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return OnnxRuntimeCall(buffer.getvalue(), options, {"input": example.numpy()})


class OnnxRuntimeCall:
    """One exported model's forward on ONNX Runtime, its session opened on the first call and closed by
    :meth:`release`. An ORT session keeps its memory arena (every activation buffer of its largest run)
    for as long as it lives; :func:`time_rounds` keeps all the calls it interleaves, so with one session
    each, a batch-64 MobileNetV2 table at 224 px held its ~450 standalone layers' arenas at once and was
    killed by the kernel at 20 GB. Released after each visit, only the session being timed holds memory;
    a visit's first forward re-grows the arena and the fastest of its forwards is kept, so the figure
    is the warm, arena-backed forward a deployed session runs."""

    def __init__(self, model_bytes: bytes, options, feed: dict):
        self.model_bytes, self.options, self.feed = model_bytes, options, feed
        self.session = None

    def __call__(self) -> object:
        if self.session is None:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(
                self.model_bytes, self.options, providers=["CPUExecutionProvider"]
            )
        return self.session.run(None, self.feed)

    def release(self) -> None:
        self.session = None


@dataclass(frozen=True)
class Timing:
    """How long each figure is measured for (see the module docstring)."""

    rounds: int = 3
    warmup: int = 2
    min_repeats: int = 3
    min_seconds: float = 0.02


def time_rounds(
    calls: Sequence[Callable[[], object]],
    timing: Timing,
    *,
    threads: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(len(calls), rounds) fastest forward time in milliseconds of each call in each round."""
    steady_allocator()
    results = np.zeros((len(calls), timing.rounds))
    order_rng = np.random.default_rng(seed)
    with torch_threads(threads):
        for call in calls:
            for _ in range(timing.warmup):
                call()
            _release(call)
        for round_index in range(timing.rounds):
            for index in order_rng.permutation(len(calls)):
                results[index, round_index] = _visit(calls[index], timing)
                _release(calls[index])
                if progress is not None:
                    progress(1)
    return results


def _release(call: Callable[[], object]) -> None:
    """Let a call free what it holds between visits (:class:`OnnxRuntimeCall`'s session)."""
    release = getattr(call, "release", None)
    if release is not None:
        release()


def _visit(call: Callable[[], object], timing: Timing) -> float:
    times = []
    started = time.perf_counter()
    while len(times) < timing.min_repeats or time.perf_counter() - started < timing.min_seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return float(min(times) * 1000.0)


def paired_ratios(rounds_ms: np.ndarray) -> np.ndarray:
    """(K,) median over rounds of each row's time / row 0's time in the same round, from the (K, rounds)
    figures of :func:`time_rounds`. Rounds pair the calls in time, so a slow phase of a shared machine,
    which lasts longer than a round, scales both sides of a ratio alike: on a 2-core VM one candidate's
    ratio to ResNet-18 moved 0.01-0.03 between passes this way and 0.05-0.07 as a ratio of the two minima
    (``benchmarks/RESULTS.md``, "Latency ratio noise")."""
    rounds_ms = np.asarray(rounds_ms, dtype=np.float64)
    return np.median(rounds_ms / rounds_ms[:1], axis=1)


def measure_models(
    models: Sequence[nn.Module],
    input_size: Sequence[int],
    *,
    runtime: str,
    batch_size: int,
    threads: int,
    timing: Timing = Timing(rounds=5, min_seconds=0.2),
) -> list[float]:
    """Milliseconds per forward of each model on ``runtime``: minimum over interleaved rounds (so the
    models compared see the same machine), the way the latency tables are measured."""
    example = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(0))
    calls = [prepare(runtime, model, example, threads) for model in models]
    return [float(value) for value in time_rounds(calls, timing, threads=threads).min(axis=1)]
