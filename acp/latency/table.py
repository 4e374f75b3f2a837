"""A measured latency table per layer geometry, and the predictor ``widths -> milliseconds`` built on it.

Building (:func:`build_latency_model`):

1. every Conv2d/Linear call of the model (``space.compute_layers``) is grouped by its *geometry* (kind,
   input size, kernel, stride, padding, ...); calls of equal geometry share one table. So is every
   element-wise call that can be timed alone (BatchNorm, activations, pools: ``space.elementwise_calls``
   with ``timeable``), by module type, settings and input size;
2. a compute table is a grid over (input width, output width): ``grid_points`` levels per varying axis,
   evenly spaced multiples of the space's ``round_to`` between the smallest and the full width the space
   allows (a depthwise conv and an element-wise call have one axis). A standalone copy of the layer is
   timed at every grid point, all points interleaved over rounds (:func:`acp.latency.runtimes.time_rounds`),
   keeping each point's minimum over rounds (timing noise only ever adds time);
3. each table is made monotone (a running maximum along both axes: a wider layer is never predicted
   faster), so the predictor is a monotone cost and the budget repair's bisection is exact;
4. a few whole models (the base, and seeded widths of every size: :func:`spread_widths`) are measured the
   same way and a non-negative least-squares fit maps the compute tables' sum, the element-wise tables'
   sum and the elements of the calls without a table to their measured latency:
   ``ms = a * compute tables + e * element-wise tables + b * other elements + c`` with all coefficients
   >= 0 (``c``: fixed layers and the runtime's per-call overhead).

Why element-wise calls have tables: their time per element is not constant. At batch 64 and 224 px a
MobileNetV2's BatchNorms take 41% of an eager forward (torch profiler) and their tensors outgrow the caches
as the widths grow, so one coefficient per element under-predicted wide models by up to 35%.

Predicting (:meth:`LatencyModel.__call__`) is bilinear interpolation in every table for a whole (P, G)
width matrix at once: numpy only, no model is built.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from acp.core.graph import pruned_copy
from acp.core.layers import DEPTHWISE, ELEMENTWISE, FIXED, LINEAR, AffineWidth, ComputeLayer, ElementwiseCall
from acp.errors import UserError
from acp.latency.runtimes import Timing, prepare, time_rounds

FORMAT = "acp.latency/2"  # /2: element-wise tables, four coefficients
ELEMENTS_UNIT = 1e6  # the element-wise coefficient is per million elements


@dataclass(frozen=True)
class GeometryTable:
    """Measured milliseconds of one layer geometry on a grid of (input width, output width)."""

    geometry: tuple
    in_levels: tuple[int, ...]
    out_levels: tuple[int, ...]
    measured_ms: np.ndarray  # (len(in_levels), len(out_levels)), minimum over rounds
    noise: float = 0.0  # median over points of (median - min) / min over rounds

    @property
    def ms(self) -> np.ndarray:
        """The monotone envelope of the measurements (running maximum along both axes)."""
        return np.maximum.accumulate(np.maximum.accumulate(self.measured_ms, axis=0), axis=1)

    def lookup(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of :attr:`ms` (clamped to the grid) at integer widths."""
        grid = self.ms
        i0, i1, ti = _bracket(self.in_levels, cin)
        o0, o1, to = _bracket(self.out_levels, cout)
        low = grid[i0, o0] * (1 - to) + grid[i0, o1] * to
        high = grid[i1, o0] * (1 - to) + grid[i1, o1] * to
        return low * (1 - ti) + high * ti


def _bracket(levels: Sequence[int], values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    levels = np.asarray(levels, dtype=np.float64)
    values = np.clip(np.asarray(values, dtype=np.float64), levels[0], levels[-1])
    if len(levels) == 1:
        zeros = np.zeros(values.shape, dtype=np.int64)
        return zeros, zeros, np.zeros(values.shape)
    upper = np.clip(np.searchsorted(levels, values, side="left"), 1, len(levels) - 1)
    lower = upper - 1
    fraction = (values - levels[lower]) / (levels[upper] - levels[lower])
    return lower, upper, fraction


@dataclass(frozen=True)
class LatencyModel:
    """Predicted milliseconds of any widths of one space, on one runtime, batch size and thread count."""

    key: dict  # what the measurements depend on (see acp.latency.cache)
    tables: tuple[GeometryTable, ...]
    layers: tuple[tuple[int, AffineWidth, AffineWidth], ...]  # per compute layer: table, cin, cout
    elementwise: tuple[tuple[int, AffineWidth], ...]  # per untimed element-wise call: elements/channel, width
    # a (compute tables), e (element-wise tables), b (per million untimed elements), c (ms)
    coefficients: tuple[float, float, float, float]
    calibration: tuple[dict, ...] = ()  # whole models: widths, measured_ms, predicted_ms
    base_measured_ms: float = math.nan
    build_seconds: float = 0.0
    layer_names: tuple[str, ...] = field(default=())
    elementwise_layers: tuple[tuple[int, AffineWidth], ...] = ()  # per timed element-wise call: table, width
    elementwise_names: tuple[str, ...] = field(default=())

    def __call__(self, widths: np.ndarray) -> np.ndarray:
        """(P,) predicted milliseconds for a (P, G) integer width matrix (or (G,) -> a 0-d array)."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        values = self.features(matrix) @ np.asarray(self.coefficients, dtype=np.float64)
        return values if np.ndim(widths) == 2 else values[0]

    def features(self, widths: np.ndarray) -> np.ndarray:
        """(P, 4) what the coefficients multiply: compute tables' sum, element-wise tables' sum, million
        untimed elements, 1."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        return np.stack(
            [
                self.layer_ms(matrix).sum(axis=1),
                self.elementwise_ms(matrix).sum(axis=1),
                self.elements(matrix) / ELEMENTS_UNIT,
                np.ones(matrix.shape[0]),
            ],
            axis=1,
        )

    def layer_ms(self, widths: np.ndarray) -> np.ndarray:
        """(P, L) table milliseconds of every compute layer (before the fitted scale)."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        columns = [self.tables[table].lookup(cin(matrix), cout(matrix)) for table, cin, cout in self.layers]
        return np.stack(columns, axis=1) if columns else np.zeros((matrix.shape[0], 0))

    def elementwise_ms(self, widths: np.ndarray) -> np.ndarray:
        """(P, E) table milliseconds of every timed element-wise call (before the fitted scale)."""
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        ones = np.ones(matrix.shape[0], dtype=np.int64)
        columns = [self.tables[table].lookup(width(matrix), ones) for table, width in self.elementwise_layers]
        return np.stack(columns, axis=1) if columns else np.zeros((matrix.shape[0], 0))

    def elements(self, widths: np.ndarray) -> np.ndarray:
        matrix = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        total = np.zeros(matrix.shape[0], dtype=np.float64)
        for per_channel, width in self.elementwise:
            total += per_channel * width(matrix)
        return total * self.key.get("batch_size", 1)

    @property
    def base_ms(self) -> float:
        """Predicted latency of the unpruned model (the reference of a ``latency`` ratio budget)."""
        return float(self(np.asarray(self.key["full_widths"], dtype=np.int64)))

    @property
    def noise(self) -> float:
        """Median relative spread between rounds over all table points (timing noise of the build)."""
        return float(np.median([table.noise for table in self.tables])) if self.tables else 0.0

    def record(self) -> dict:
        """Where it was measured (for an architecture file's ``latency``)."""
        return {key: self.key.get(key) for key in ("runtime", "batch_size", "threads", "cpu")}

    def check_space(self, space) -> None:
        """UserError when ``space`` is not the one this model was measured for."""
        if list(space.ids) != list(self.key["groups"]) or [int(w) for w in space.full_widths()] != list(
            self.key["full_widths"]
        ):
            raise UserError("latency table: it was measured for a different model or search space")

    # --- serialization -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            "coefficients": list(self.coefficients),
            "base_measured_ms": self.base_measured_ms,
            "build_seconds": self.build_seconds,
            "tables": [
                {
                    "geometry": _plain(table.geometry),
                    "in_levels": list(table.in_levels),
                    "out_levels": list(table.out_levels),
                    "measured_ms": table.measured_ms.tolist(),
                    "noise": table.noise,
                }
                for table in self.tables
            ],
            "layers": [
                {"name": name, "table": table, "in": _affine_dict(cin), "out": _affine_dict(cout)}
                for name, (table, cin, cout) in zip(self.layer_names, self.layers)
            ],
            "elementwise": [{"per_channel": n, "width": _affine_dict(w)} for n, w in self.elementwise],
            "elementwise_layers": [
                {"name": name, "table": table, "width": _affine_dict(width)}
                for name, (table, width) in zip(self.elementwise_names, self.elementwise_layers)
            ],
            "calibration": list(self.calibration),
        }

    @classmethod
    def from_dict(cls, document: dict) -> LatencyModel:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise UserError(f"latency table: expected format {FORMAT!r}")
        try:
            tables = tuple(
                GeometryTable(
                    tuple(_tuple(part) for part in entry["geometry"]),
                    tuple(int(level) for level in entry["in_levels"]),
                    tuple(int(level) for level in entry["out_levels"]),
                    np.asarray(entry["measured_ms"], dtype=np.float64),
                    float(entry.get("noise", 0.0)),
                )
                for entry in document["tables"]
            )
            layers = tuple(
                (int(entry["table"]), _affine(entry["in"]), _affine(entry["out"]))
                for entry in document["layers"]
            )
            for table in tables:
                if table.measured_ms.shape != (len(table.in_levels), len(table.out_levels)):
                    raise ValueError("a table's values do not match its levels")
            timed = tuple(
                (int(entry["table"]), _affine(entry["width"])) for entry in document["elementwise_layers"]
            )
            indices = [index for index, _, _ in layers] + [index for index, _ in timed]
            if any(not 0 <= index < len(tables) for index in indices):
                raise ValueError("a layer names a table that does not exist")
            coefficients = tuple(float(value) for value in document["coefficients"])
            if len(coefficients) != 4:
                raise ValueError("expected 4 coefficients")
            return cls(
                key=dict(document["key"]),
                tables=tables,
                layers=layers,
                elementwise=tuple(
                    (int(entry["per_channel"]), _affine(entry["width"])) for entry in document["elementwise"]
                ),
                coefficients=coefficients,
                calibration=tuple(document.get("calibration", ())),
                base_measured_ms=float(document.get("base_measured_ms", math.nan)),
                build_seconds=float(document.get("build_seconds", 0.0)),
                layer_names=tuple(str(entry["name"]) for entry in document["layers"]),
                elementwise_layers=timed,
                elementwise_names=tuple(str(entry["name"]) for entry in document["elementwise_layers"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"latency table: malformed ({error})") from None


def _affine_dict(width: AffineWidth) -> dict:
    return {"offset": width.offset, "terms": [list(term) for term in width.terms]}


def _affine(document: dict) -> AffineWidth:
    return AffineWidth(int(document["offset"]), tuple((int(c), int(m)) for c, m in document["terms"]))


def _plain(value):
    return [_plain(item) for item in value] if isinstance(value, tuple | list) else value


def _tuple(value):
    return tuple(_tuple(item) for item in value) if isinstance(value, list) else value


# --- building -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    """What to measure: grid levels per geometry and the whole models of the calibration."""

    geometries: tuple[tuple, ...]
    levels: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # per geometry: (in levels, out levels)
    layer_tables: tuple[int, ...]  # per compute layer: its geometry's index
    elementwise_tables: tuple[int, ...]  # per timeable element-wise call: its geometry's index
    calibration_widths: np.ndarray  # (K, G), the base model first

    def representatives(self, space) -> dict[int, ComputeLayer | ElementwiseCall]:
        """One layer or call of every geometry (the one a standalone copy is made of)."""
        chosen: dict[int, ComputeLayer | ElementwiseCall] = {}
        for layer, table in zip(space.compute_layers, self.layer_tables):
            chosen.setdefault(table, layer)
        for call, table in zip(timed_calls(space), self.elementwise_tables):
            chosen.setdefault(table, call)
        return chosen


def timed_calls(space) -> tuple[ElementwiseCall, ...]:
    """The element-wise calls with their own latency table (the others count as elements)."""
    return tuple(call for call in space.elementwise_calls if call.timeable)


def untimed_calls(space) -> tuple[ElementwiseCall, ...]:
    return tuple(call for call in space.elementwise_calls if not call.timeable)


def axis_levels(low: int, high: int, points: int, step: int) -> tuple[int, ...]:
    """Up to ``points`` widths from ``low`` to ``high``: evenly spaced multiples of ``step``, both ends."""
    if high <= low or points <= 1:
        return (int(high),)
    raw = np.linspace(low, high, points)
    snapped = np.round(raw / step) * step
    levels = {int(low), int(high), *(int(v) for v in snapped if low < v < high)}
    return tuple(sorted(levels))


def plan_build(space, *, grid_points: int, calibration_models: int, seed: int) -> BuildPlan:
    low, high = space.min_widths(), space.full_widths()
    step = int(space.settings.get("round_to", 1))
    geometries: list[tuple] = []
    ranges: dict[int, list[int]] = {}  # geometry -> [in low, in high, out low, out high]

    def table_of(geometry: tuple, in_width: AffineWidth, out_width: AffineWidth | None) -> int:
        if geometry not in geometries:
            geometries.append(geometry)
        index = geometries.index(geometry)
        in_low, in_high = in_width.bounds(low, high)
        out_low, out_high = out_width.bounds(low, high) if out_width is not None else (1, 1)
        bounds = ranges.setdefault(index, [in_low, in_high, out_low, out_high])
        ranges[index] = [
            min(bounds[0], in_low),
            max(bounds[1], in_high),
            min(bounds[2], out_low),
            max(bounds[3], out_high),
        ]
        return index

    layer_tables = [
        table_of(layer.geometry(), layer.in_width, layer.out_width) for layer in space.compute_layers
    ]
    elementwise_tables = [table_of(call.geometry(), call.width, None) for call in timed_calls(space)]
    levels = []
    for index, geometry in enumerate(geometries):
        in_low, in_high, out_low, out_high = ranges[index]
        in_levels = axis_levels(in_low, in_high, grid_points, step)
        # depthwise: output width == input width; element-wise: one width; one axis
        one_axis = geometry[0] in (DEPTHWISE, ELEMENTWISE)
        out_levels = (1,) if one_axis else axis_levels(out_low, out_high, grid_points, step)
        levels.append((in_levels, out_levels))
    calibration = np.vstack([high[None, :], spread_widths(space, calibration_models - 1, seed)])
    return BuildPlan(
        tuple(geometries), tuple(levels), tuple(layer_tables), tuple(elementwise_tables), calibration
    )


def spread_widths(space, count: int, seed: int) -> np.ndarray:
    """``count`` seeded width vectors spanning every model size: candidate k scales the full widths by
    ``s_k`` (evenly spaced over (0, 1], in a seeded order) times a per-group jitter in [0.6, 1.4], clipped
    to the allowed range. Uniform per-group widths would all have about half the base latency."""
    low, high = space.min_widths(), space.full_widths()
    rng = np.random.default_rng(seed)
    scales = rng.permutation((np.arange(count) + 0.5) / max(count, 1))
    jitter = rng.uniform(0.6, 1.4, size=(count, len(high)))
    rows = np.clip(scales[:, None] * jitter * high[None, :], low, high)
    return space.snap(rows).reshape(count, len(high)) if count else np.zeros((0, len(high)), dtype=np.int64)


_INPUT_POOL: list[torch.Tensor] = []  # the newest (largest) seeded noise the standalone inputs view


def seeded_input(shape: Sequence[int]) -> torch.Tensor:
    """A random input of ``shape``: a view of one shared pool of seeded normal noise, so a table's hundreds
    of standalone calls, all kept alive to be timed in interleaved rounds, hold no input memory of their
    own (separate inputs took ~20 GB for MobileNetV2's layers at batch 64, 224 px). The pool grows to at
    least twice its size when a larger input is asked for; latency does not depend on the values."""
    numel = math.prod(int(size) for size in shape)
    if not _INPUT_POOL or _INPUT_POOL[0].numel() < numel:
        size = max(numel, 2 * _INPUT_POOL[0].numel() if _INPUT_POOL else numel)
        _INPUT_POOL[:] = [torch.randn(size, generator=torch.Generator().manual_seed(0))]
    return _INPUT_POOL[0][:numel].view(*shape)


def standalone_layer(
    layer: ComputeLayer, cin: int, cout: int, batch_size: int
) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``layer``'s geometry at widths (cin, cout), and a seeded input of its shape."""
    if layer.kind == LINEAR:
        module: nn.Module = nn.Linear(cin, cout, bias=layer.bias)
        shape = (batch_size, *layer.in_shape[1:-1], cin)
    else:
        groups = cin if layer.kind == DEPTHWISE else layer.groups if layer.kind == FIXED else 1
        module = nn.Conv2d(
            cin,
            cin if layer.kind == DEPTHWISE else cout,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            groups=groups,
            bias=layer.bias,
        )
        shape = (batch_size, cin, *layer.in_shape[2:])
    return module.eval(), seeded_input(shape)


def standalone_elementwise(
    model: nn.Module, call: ElementwiseCall, width: int, batch_size: int
) -> tuple[nn.Module, torch.Tensor]:
    """A copy of the element-wise module of ``call`` at ``width`` channels, and a seeded input."""
    original = model.get_submodule(call.module)
    if isinstance(original, nn.modules.batchnorm._NormBase):
        module: nn.Module = type(original)(
            width,
            eps=original.eps,
            affine=original.affine,
            track_running_stats=original.track_running_stats,
        )
    else:
        module = copy.deepcopy(original)
    return module.eval(), seeded_input((batch_size, width, *call.in_shape[2:]))


class RuntimeMeter:
    """Times standalone layers and whole pruned models of ``model`` on a runtime (the real measurements;
    tests substitute a synthetic meter with the same two methods)."""

    def __init__(
        self,
        model: nn.Module,
        space,
        *,
        runtime: str,
        batch_size: int,
        threads: int,
        timing: Timing,
        seed: int = 0,
        progress: Callable[[int, str], Callable[[int], None]] | None = None,
    ):
        self.model, self.space = model, space
        self.runtime, self.batch_size, self.threads = runtime, batch_size, threads
        self.timing, self.seed, self.progress = timing, seed, progress

    def layers(self, points: Sequence[tuple[ComputeLayer | ElementwiseCall, int, int]]) -> np.ndarray:
        """(len(points), rounds) ms of a standalone copy of each layer at widths (cin, cout) (an
        element-wise call at width cin)."""
        calls = []
        for layer, cin, cout in points:
            if isinstance(layer, ElementwiseCall):
                module, example = standalone_elementwise(self.model, layer, cin, self.batch_size)
            else:
                module, example = standalone_layer(layer, cin, cout, self.batch_size)
            calls.append(prepare(self.runtime, module, example, self.threads))
        tick = self.progress(len(calls) * self.timing.rounds, "layer tables") if self.progress else None
        return time_rounds(calls, self.timing, threads=self.threads, seed=self.seed, progress=tick)

    def models(self, widths: np.ndarray) -> np.ndarray:
        """(K,) ms of the whole model pruned to each width vector: minimum over interleaved rounds."""
        return self.model_rounds(widths).min(axis=1)

    def model_rounds(self, widths: np.ndarray) -> np.ndarray:
        """(K, rounds) ms of the whole model pruned to each width vector, in each interleaved round."""
        shape = (self.batch_size, *self.space.input_shape[1:])
        example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        calls = [
            prepare(self.runtime, pruned_at(self.model, self.space, row).eval(), example, self.threads)
            for row in widths
        ]
        tick = self.progress(len(calls) * self.timing.rounds, "whole models") if self.progress else None
        timing = dataclasses.replace(self.timing, min_seconds=max(self.timing.min_seconds, 0.1))
        return time_rounds(calls, timing, threads=self.threads, seed=self.seed + 1, progress=tick)


def build_latency_model(
    space,
    meter,
    *,
    key: dict,
    grid_points: int,
    calibration_models: int,
    seed: int = 0,
) -> LatencyModel:
    """Measure the tables and the calibration models with ``meter`` (see the module docstring)."""
    import time

    started = time.perf_counter()
    plan = plan_build(space, grid_points=grid_points, calibration_models=calibration_models, seed=seed)
    representative = plan.representatives(space)
    points = [
        (table, cin, cin if plan.geometries[table][0] == DEPTHWISE else cout)
        for table, (in_levels, out_levels) in enumerate(plan.levels)
        for cin in in_levels
        for cout in out_levels
    ]
    rounds = np.asarray(meter.layers([(representative[table], cin, cout) for table, cin, cout in points]))
    tables = []
    for index, (in_levels, out_levels) in enumerate(plan.levels):
        rows = [position for position, point in enumerate(points) if point[0] == index]
        best = rounds[rows].min(axis=1)
        spread = np.median((np.median(rounds[rows], axis=1) - best) / np.maximum(best, 1e-9))
        grid = best.reshape(len(in_levels), len(out_levels))
        tables.append(GeometryTable(plan.geometries[index], in_levels, out_levels, grid, float(spread)))
    timed = timed_calls(space)
    unfitted = LatencyModel(
        key=key,
        tables=tuple(tables),
        layers=tuple(
            (table, layer.in_width, layer.out_width)
            for layer, table in zip(space.compute_layers, plan.layer_tables)
        ),
        elementwise=tuple((call.per_channel, call.width) for call in untimed_calls(space)),
        coefficients=(1.0, 1.0, 0.0, 0.0),
        layer_names=tuple(layer.module for layer in space.compute_layers),
        elementwise_layers=tuple((table, call.width) for call, table in zip(timed, plan.elementwise_tables)),
        elementwise_names=tuple(call.module for call in timed),
    )
    measured = np.asarray(meter.models(plan.calibration_widths), dtype=np.float64)
    fitted = fit_coefficients(unfitted, plan.calibration_widths, measured)
    predicted = fitted(plan.calibration_widths)
    calibration = tuple(
        {"widths": [int(w) for w in row], "measured_ms": float(m), "predicted_ms": float(p)}
        for row, m, p in zip(plan.calibration_widths, measured, predicted)
    )
    return dataclasses.replace(
        fitted,
        calibration=calibration,
        base_measured_ms=float(measured[0]),
        build_seconds=time.perf_counter() - started,
    )


def fit_coefficients(model: LatencyModel, widths: np.ndarray, measured_ms: np.ndarray) -> LatencyModel:
    """Non-negative least squares of measured ms on :meth:`LatencyModel.features`, in relative error
    terms (rows weighted by 1 / measured, so small models count as much as large ones)."""
    design = model.features(widths)
    weights = 1.0 / np.maximum(np.asarray(measured_ms, dtype=np.float64), 1e-9)
    solution, _ = nnls(design * weights[:, None], np.asarray(measured_ms) * weights)
    return dataclasses.replace(model, coefficients=tuple(float(value) for value in solution))


def pruned_at(model: nn.Module, space, widths: np.ndarray) -> nn.Module:
    """``model`` with the first ``widths[g]`` channels of every group (latency does not depend on which)."""
    keep = {group.id: list(range(int(width))) for group, width in zip(space.groups, widths)}
    return pruned_copy(model, space.removal_plan(keep))
