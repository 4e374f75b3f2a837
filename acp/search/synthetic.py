"""Cheap, deterministic stand-ins for the proxy evaluator: for tests and engine benchmarks.

``SyntheticEvaluator(space)`` scores a width vector with a smooth landscape whose optimum is a fixed
"preferred" keep-ratio profile: score = 1 - mean squared distance between the candidate's keep ratios
and the profile (plus an optional sleep to mimic an expensive evaluation). It needs no data and no
torch, pickles in microseconds, and gives the same score for the same widths in any process.

Harder landscapes for the engine benchmark (``benchmarks/bench_engines.py``), same record shape:

- :class:`MultimodalLandscape`: several Gaussian peaks of different heights and widths whose centres lie
  on the budget (repaired onto it), one global (height 1 at ``centres[0]``): the optimum is known exactly.
  With ``noise > 0`` every score carries a deterministic pseudo-random error, drawn from a generator
  seeded by the width vector itself, so runs stay bit-reproducible in any process; ``accuracy`` holds the
  noise-free value (what the proxy score estimates).
- :class:`SurrogateLandscape`: the posterior mean of a Gaussian process fitted to real proxy evaluations
  (``benchmarks/data/*.json``: the training points and the fitted kernel's hyperparameters, plain data;
  the weights are solved again at load, deterministically, with numpy).

``landscape(name, space, ...)`` builds one by name: ``smooth``, ``multimodal``, ``noisy``, ``surrogate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticResult:
    score: float
    accuracy: float
    loss: float
    macs: int
    params: int
    seconds: float
    status: str = "ok"


class SyntheticEvaluator:
    """Deterministic evaluator over ``space``; ``fail_when(widths) -> bool`` makes chosen candidates raise."""

    def __init__(self, space, *, seed: int = 0, sleep: float = 0.0, fail_when=None, identity=None):
        self.space = space
        self.identity = identity
        rng = np.random.default_rng(seed)
        self.profile = rng.uniform(0.2, 1.0, size=len(space.groups))
        self.full = np.asarray(space.full_widths(), dtype=np.float64)
        self.sleep = float(sleep)
        self.fail_when = fail_when

    def evaluate(self, widths) -> SyntheticResult:
        began = time.perf_counter()
        widths = np.asarray(widths, dtype=np.int64)
        if self.fail_when is not None and self.fail_when(widths):
            raise RuntimeError(f"synthetic failure for widths {widths.tolist()}")
        if self.sleep:
            time.sleep(self.sleep)
        macs, params = self.space.cost(widths)
        distance = float(np.mean((widths / self.full - self.profile) ** 2))
        score = 1.0 - distance
        return SyntheticResult(score, score, distance, int(macs), int(params), time.perf_counter() - began)

    def architecture(self, widths, *, budget=None, provenance=None):
        """An Architecture keeping each group's first ``width`` channels (there is no real criterion)."""
        from acp.core.architecture import Architecture, ModelIdentity

        identity = self.identity or ModelIdentity("<synthetic>", None, tuple(self.space.input_shape[1:]), {})
        widths = [int(w) for w in widths]
        keep = {group.id: range(width) for group, width in zip(self.space.groups, widths)}
        return Architecture.from_widths(
            self.space,
            identity,
            widths,
            keep,
            budget=budget,
            space_settings=dict(self.space.settings),
            provenance={"criterion": "first", **dict(provenance or {})},
        )


class _Landscape:
    """Shared by the benchmark landscapes: ``values(widths)`` (noise-free, vectorized) is the truth,
    ``evaluate(widths)`` the record a search sees (``score`` may carry noise; ``accuracy`` does not)."""

    noise = 0.0
    noise_seed = 0
    optimum: float | None = None  # the best noise-free value under the budget, when known exactly

    def __init__(self, space, *, sleep: float = 0.0):
        self.space = space
        self.full = np.asarray(space.full_widths(), dtype=np.float64)
        self.sleep = float(sleep)

    def values(self, widths) -> np.ndarray:
        raise NotImplementedError

    def observe(self, widths) -> float:
        """The score a search sees: the value plus the width vector's own, reproducible noise draw."""
        widths = np.asarray(widths, dtype=np.int64)
        value = float(self.values(widths[None, :])[0])
        if not self.noise:
            return value
        entropy = [int(self.noise_seed), *(int(w) for w in widths)]
        return value + self.noise * float(np.random.default_rng(entropy).standard_normal())

    def evaluate(self, widths) -> SyntheticResult:
        began = time.perf_counter()
        widths = np.asarray(widths, dtype=np.int64)
        if self.sleep:
            time.sleep(self.sleep)
        macs, params = self.space.cost(widths)
        value = float(self.values(widths[None, :])[0])
        score = self.observe(widths)
        return SyntheticResult(score, value, 1.0 - value, int(macs), int(params), time.perf_counter() - began)

    architecture = SyntheticEvaluator.architecture
    identity = None


class SmoothLandscape(_Landscape):
    """``SyntheticEvaluator``'s landscape (same profile for the same seed), vectorized; optimum unknown
    (the profile is not on the budget)."""

    def __init__(self, space, *, seed: int = 0, sleep: float = 0.0):
        super().__init__(space, sleep=sleep)
        self.profile = SyntheticEvaluator(space, seed=seed).profile

    def values(self, widths) -> np.ndarray:
        ratios = np.atleast_2d(np.asarray(widths, dtype=np.float64)) / self.full
        return 1.0 - np.mean((ratios - self.profile) ** 2, axis=1)


class MultimodalLandscape(_Landscape):
    """``peaks`` Gaussian bumps, value = max_k height_k * exp(-msd(ratios, centre_k) / (2 width_k^2)).

    Centres are random keep-ratio shapes repaired onto ``budget`` (a :class:`~acp.core.budget.Budget`),
    so each peak is reachable exactly. Peak 0 is the global one (height 1, the narrowest); the others are
    lower (0.9 down to 0.6) and broader, so following the broad slopes leads to a local optimum.
    """

    def __init__(self, space, budget, *, peaks: int = 5, seed: int = 0, noise: float = 0.0, sleep=0.0):
        super().__init__(space, sleep=sleep)
        if peaks < 1:
            raise ValueError(f"peaks must be >= 1, got {peaks}")
        rng = np.random.default_rng([seed, 7919])
        shapes = rng.uniform(0.15, 1.0, size=(peaks, len(self.full)))
        self.centres = np.asarray(budget.repair(shapes), dtype=np.float64) / self.full
        self.heights = np.concatenate([[1.0], np.linspace(0.9, 0.6, peaks - 1)])
        self.widths = np.concatenate([[0.15], rng.uniform(0.12, 0.17, size=peaks - 1)])
        self.noise = float(noise)
        self.noise_seed = int(seed)
        self.optimum = float(self.values(budget.repair(self.centres[0]))[0])

    def values(self, widths) -> np.ndarray:
        ratios = np.atleast_2d(np.asarray(widths, dtype=np.float64)) / self.full
        msd = np.mean((ratios[:, None, :] - self.centres[None, :, :]) ** 2, axis=2)
        return np.max(self.heights * np.exp(-msd / (2 * self.widths**2)), axis=1)


class SurrogateLandscape(_Landscape):
    """A Gaussian-process posterior mean over keep ratios, fitted to real proxy evaluations.

    ``document``: ``{"group_ids", "full_widths", "points": [[width, ...], ...], "scores": [...],
    "kernel": {"amplitude", "length_scales", "noise", "y_mean", "y_scale"}}`` (what
    ``benchmarks/bench_engines.py`` writes). Deterministic: the weights are one Cholesky solve.
    """

    def __init__(self, space, document: dict, *, noise: float = 0.0, seed: int = 0, sleep: float = 0.0):
        super().__init__(space, sleep=sleep)
        if list(document["full_widths"]) != [int(w) for w in self.full]:
            raise ValueError("surrogate: its full widths differ from the space's")
        kernel = document["kernel"]
        self.points = np.asarray(document["points"], dtype=np.float64) / self.full
        scores = np.asarray(document["scores"], dtype=np.float64)
        self.amplitude = float(kernel["amplitude"])
        self.length_scales = np.asarray(kernel["length_scales"], dtype=np.float64)
        self.y_mean, self.y_scale = float(kernel["y_mean"]), float(kernel["y_scale"])
        gram = self._kernel(self.points, self.points) + float(kernel["noise"]) * np.eye(len(self.points))
        factor = np.linalg.cholesky(gram)
        target = (scores - self.y_mean) / self.y_scale
        self.weights = np.linalg.solve(factor.T, np.linalg.solve(factor, target))
        self.noise = float(noise)
        self.noise_seed = int(seed)

    @classmethod
    def load(cls, space, path, **kwargs) -> SurrogateLandscape:
        import json
        from pathlib import Path

        return cls(space, json.loads(Path(path).read_text(encoding="utf-8")), **kwargs)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        scaled_a, scaled_b = a / self.length_scales, b / self.length_scales
        squared = (
            np.sum(scaled_a**2, axis=1)[:, None]
            + np.sum(scaled_b**2, axis=1)[None, :]
            - 2 * scaled_a @ scaled_b.T
        )
        return self.amplitude * np.exp(-0.5 * np.maximum(squared, 0.0))

    def values(self, widths) -> np.ndarray:
        ratios = np.atleast_2d(np.asarray(widths, dtype=np.float64)) / self.full
        return self.y_mean + self.y_scale * (self._kernel(ratios, self.points) @ self.weights)


# The noisy landscape's score error: the proxy's own, measured as the held-out RMSE of the surrogate GP
# (benchmarks/RESULTS.md, "Search engines") relative to the spread (p5..p95) of proxy scores of random
# candidates, times the multimodal landscape's spread (0..1).
PROXY_NOISE = 0.02  # 0.0167 (GP white noise) / 0.276 (proxy p5..p95) * 0.30 (multimodal p5..p95)

LANDSCAPES = ("smooth", "multimodal", "noisy", "surrogate")


def landscape(name: str, space, *, budget=None, seed: int = 0, noise: float | None = None, surrogate=None):
    """A benchmark landscape by name. ``noisy`` = ``multimodal`` + noise of the proxy's size
    (``noise``, default :data:`PROXY_NOISE`); ``surrogate`` needs the fitted document's path."""
    if name == "smooth":
        return SmoothLandscape(space, seed=seed)
    if name in ("multimodal", "noisy"):
        if budget is None:
            raise ValueError(f"landscape {name!r} needs the budget (its peaks lie on it)")
        amount = (PROXY_NOISE if noise is None else noise) if name == "noisy" else 0.0
        return MultimodalLandscape(space, budget, seed=seed, noise=amount)
    if name == "surrogate":
        if surrogate is None:
            raise ValueError("landscape 'surrogate' needs the path of its fitted document")
        return SurrogateLandscape.load(space, surrogate)
    raise ValueError(f"unknown landscape {name!r}; expected one of {', '.join(LANDSCAPES)}")
