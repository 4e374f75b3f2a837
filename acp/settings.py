"""THE schema: every setting of acp, its default and what it may be, in one place.

Each config section is a frozen dataclass; each field is declared once with :func:`setting` (default,
type, rule). The same rules check a dataclass made in Python (``SearchSettings(particles=1)``) and a TOML
file (``resnet20.toml: [search].particles = 1 is not allowed (expected an integer >= 2)``), so a bad
setting is reported when the settings object is made -- before any model is built or image decoded.

``RunSettings`` is a whole run configuration (the sections of a ``search_spaces/*.toml`` file);
:func:`load_settings` reads one, :meth:`RunSettings.to_toml` writes it back. Relative paths inside a file
are relative to the file's own directory. Sections that are not TOML sections (``Schedule`` for
``acp train``, ``ProposeSettings`` for ``acp cluster``) are declared the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import numbers
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from acp.errors import UserError

# --- the vocabulary of checks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What a setting accepts: Python types (after TOML parsing), a check of the value, and its wording."""

    kinds: tuple[type, ...]
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    is_path: bool = False  # relative to the config file's directory
    execution: bool = False  # where/how long it runs, never what it computes (may change on resume)
    # added after runs were made: left out of the fingerprint while at its default, so those runs resume
    later: bool = False


def setting(default: Any, kinds, check=None, allowed: str = "", *, path=False, execution=False, later=False):
    """A dataclass field declared with its rule (``kinds`` is a type or a tuple of types)."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    rule = Rule(kinds, check, allowed, path, execution, later)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def at_least(low: int):
    return (lambda value: value >= low), ("a positive integer" if low == 1 else f"an integer >= {low}")


def within(low: float, high: float, *, open_low=False, open_high=False):
    def check(value) -> bool:
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        return math.isfinite(value) and above and below

    text = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return check, f"a number in {text}"


def one_of(*choices: str):
    wording = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}" if len(choices) > 1 else ""
    return (lambda value: value in choices), wording or repr(choices[0])


def optional(rule: tuple[Callable, str]):
    check, allowed = rule
    return (lambda value: value is None or check(value)), allowed


NONE = type(None)
DEFAULT_ITERATIONS = 30  # [search].iterations when neither it nor a time limit is given
# [data].cache_limit_gb when neither it nor $ACP_CACHE_LIMIT_GB is set: CIFAR-size sets (0.15 GB) and
# Tiny-ImageNet (1.2 GB) are cached as one array held in memory; ImageNet-size folders (~190 GB) stream.
DEFAULT_CACHE_LIMIT_GB = 4.0
CACHE_LIMIT_ENV = "ACP_CACHE_LIMIT_GB"
POSITIVE = at_least(1)
NON_NEGATIVE = at_least(0)
RATIO = within(0.0, 1.0, open_low=True)
NON_EMPTY = (lambda value: value is None or bool(value.strip())), "a non-empty string"

SPLIT_PATTERN = re.compile(r"^(auto|shared|cifar10-shared|tail:[1-9]\d*|random:(0?\.\d*[1-9]\d*))$")
SPLIT_WORDING = "'auto', 'shared', 'tail:K' (K >= 1) or 'random:F' (0 < F < 1)"
CRITERIA = ("cluster", "l1", "l2", "bn_scale", "hrank", "redundancy", "task", "box_relevance", "random")
SCHEDULES = ("cosine", "onecycle", "constant")
_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?"
    r"\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$"
)


def cache_limit_gb(configured: float | None = None) -> tuple[float, str]:
    """(limit in GB, where it comes from): ``configured`` ([data].cache_limit_gb), else
    ``$ACP_CACHE_LIMIT_GB``, else the default. A bad environment value is a UserError naming it."""
    if configured is not None:
        return float(configured), "[data].cache_limit_gb"
    text = os.environ.get(CACHE_LIMIT_ENV)
    if text is None or not text.strip():
        return DEFAULT_CACHE_LIMIT_GB, "default"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise UserError(f"${CACHE_LIMIT_ENV} = {text!r} is not allowed (expected a number of GB >= 0)")
    return value, f"${CACHE_LIMIT_ENV}"


def parse_duration(text: str | float | int | None, what: str = "--time-limit") -> float | None:
    """'8h', '90m', '1h30m', '45s', '3600' -> seconds; None -> None. UserError for anything else."""
    if text is None:
        return None
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text)) if isinstance(text, str) and text.strip() else None
        if match is None or not any(match.groups()):
            raise UserError(
                f"{what}: expected a duration like 8h, 90m, 1h30m or 3600 (seconds), got {text!r}"
            )
        days, hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{what}: expected a positive duration, got {text!r}")
    return seconds


def _is_duration(value) -> bool:
    try:
        parse_duration(value, "time_limit")
    except UserError:
        return False
    return True


def _input_size(value) -> bool:
    return value is None or (len(value) == 3 and all(type(v) is int and v > 0 for v in value))


def _names(value) -> bool:
    return all(isinstance(item, str) for item in value)


# --- checking a section ----------------------------------------------------------------------------


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}


def _type_name(kinds: tuple[type, ...]) -> str:
    names = [_TYPE_NAMES.get(k, "true/false" if k is bool else k.__name__) for k in kinds if k is not NONE]
    return " or ".join(names)


def _coerce(value: Any, kinds: tuple[type, ...]) -> Any:
    """The value as one of ``kinds`` (an integer where a number is expected becomes a float); TypeError."""
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError
    if float in kinds and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # TOML integers are unbounded; a float field cannot hold 10**400
            raise TypeError from None
    if int in kinds and isinstance(value, numbers.Integral) and type(value) is not int:
        return int(value)  # numpy integers
    if float in kinds and isinstance(value, numbers.Real) and type(value) is not float:
        return float(value)  # numpy floats (np.float64 is a float subclass whose repr is not TOML)
    if list in kinds and isinstance(value, tuple):
        return list(value)
    if not isinstance(value, kinds):
        raise TypeError
    return value


class Section:
    """Base of every settings dataclass: checks each field by its rule in ``__post_init__``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            rule: Rule = spec.metadata["rule"]
            value = getattr(self, spec.name)
            where = f"[{self.SECTION}].{spec.name}"
            try:
                coerced = _coerce(value, rule.kinds)
            except TypeError:
                raise UserError(f"{where} must be {_type_name(rule.kinds)}, got {value!r}") from None
            if rule.check is not None and coerced is not None and not rule.check(coerced):
                raise UserError(f"{where} = {coerced!r} is not allowed (expected {rule.allowed})")
            if coerced is not value:
                object.__setattr__(self, spec.name, coerced)
        self._check_combination()

    def _check_combination(self) -> None:
        """Rules that involve several fields (subclasses)."""

    def fail(self, key: str, message: str):
        raise UserError(f"[{self.SECTION}].{key}: {message}")

    def to_dict(self) -> dict:
        return {spec.name: _plain(getattr(self, spec.name)) for spec in dataclasses.fields(self)}

    def fingerprint(self) -> dict:
        """The settings that decide results (execution settings left out): what a resume must match."""
        return {
            spec.name: _plain(getattr(self, spec.name))
            for spec in dataclasses.fields(self)
            if not spec.metadata["rule"].execution
            and not (spec.metadata["rule"].later and getattr(self, spec.name) == spec.default)
        }

    def replace(self, **changes) -> Section:
        """A copy with ``changes`` (``None`` values are ignored: an unset flag changes nothing)."""
        given = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    @classmethod
    def from_table(cls, table: Mapping, *, source: str = "", base_dir: Path | None = None):
        """From a parsed TOML table: unknown keys are refused, relative paths resolved against base_dir."""
        prefix = f"{source}: " if source else ""
        if not isinstance(table, Mapping):
            raise UserError(f"{prefix}[{cls.SECTION}] must be a table")
        specs = {spec.name: spec for spec in dataclasses.fields(cls)}
        values = {}
        for key, value in table.items():
            if key not in specs:
                raise UserError(f"{prefix}unknown key [{cls.SECTION}].{key}{_hint(key, specs)}")
            rule = specs[key].metadata["rule"]
            if rule.is_path and isinstance(value, str) and value.strip() and base_dir is not None:
                value = _resolve_path(value, base_dir)
            values[key] = value
        try:
            return cls(**values)
        except UserError as error:
            raise UserError(f"{prefix}{error}") from None


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


GENERATED_DATA = ("digits", "shapes")  # data specs that name a generated set, not a path


def _resolve_path(value: str, base_dir: Path) -> str:
    if any(value == name or value.startswith(f"{name}:") for name in GENERATED_DATA):
        return value
    path = Path(value)
    try:
        path = path.expanduser()
    except (RuntimeError, ValueError):  # '~nosuchuser/...' or a NUL byte: kept as written, like os.path
        path = Path(value)
    return os.path.normpath(path if path.is_absolute() else (base_dir / path))


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def _default(section: type, name: str):
    return next(spec.default for spec in dataclasses.fields(section) if spec.name == name)


def _like(section: type, name: str, **overrides):
    """A field declared like ``section.name`` (same rule), optionally with another default."""
    spec = next(spec for spec in dataclasses.fields(section) if spec.name == name)
    rule: Rule = spec.metadata["rule"]
    return setting(overrides.get("default", spec.default), rule.kinds, rule.check, rule.allowed)


# --- the sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings(Section):
    """``[model]``: which network, its trained weights and its input."""

    SECTION: ClassVar[str] = "model"
    name: str | None = setting(
        None,
        (str, NONE),
        lambda v: bool(v),
        "a registry name, torchvision name, timm:NAME or package.module:factory",
    )
    num_classes: int | None = setting(None, (int, NONE), *POSITIVE)
    weights: str | None = setting(None, (str, NONE), *NON_EMPTY, path=True)
    input_size: list | None = setting(None, (list, NONE), _input_size, "[channels, height, width]")
    kwargs: dict = setting({}, dict)


@dataclass(frozen=True)
class TaskSettings(Section):
    """``[task]``: what the model does. ``auto`` (the default) follows the model: a torchvision box
    detector (``acp.models.detection``) is a detection task, anything else classification. A detection
    run takes detection data (``shapes[:SIZE]``, a Pascal VOC tree or COCO instances) and is scored by
    ``[proxy] score`` = ``map50``, ``map`` or ``loss``."""

    SECTION: ClassVar[str] = "task"
    kind: str = setting("auto", str, *one_of("auto", "classification", "detection"))


@dataclass(frozen=True)
class DataSettings(Section):
    """``[data]``: the images, and the one train/validation split every stage of a run uses."""

    SECTION: ClassVar[str] = "data"
    spec: str | None = setting(None, (str, NONE), *NON_EMPTY, path=True)
    split: str = setting("auto", str, lambda v: bool(SPLIT_PATTERN.match(v)), SPLIT_WORDING)
    seed: int = setting(0, int, *NON_NEGATIVE)  # the split's seed (random:F) and the proxy slices' seed
    # An ImageFolder whose decoded size (images x H x W x 3 bytes) is over this many GB is not decoded into
    # one cached array but streamed from its files (loader_workers decoding processes). Unset:
    # $ACP_CACHE_LIMIT_GB, else DEFAULT_CACHE_LIMIT_GB. Streamed and cached batches are bit-identical, so
    # both are execution settings (a resumed run may change them).
    cache_limit_gb: float | None = setting(
        None, (float, NONE), *optional(within(0, math.inf)), execution=True
    )
    loader_workers: int = setting(2, int, *NON_NEGATIVE, execution=True)


@dataclass(frozen=True)
class SpaceSettings(Section):
    """``[space]``: what may be pruned and to which widths."""

    SECTION: ClassVar[str] = "space"
    ignored_layers: list = setting([], list, _names, "a list of names/globs")
    round_to: int = setting(1, int, *POSITIVE)
    min_keep: float = setting(0.1, float, *RATIO)


def _limits(check: Callable[[float], bool], allowed: str):
    """A budget limit: one number, or a list of numbers (one search per entry: a multi-budget run)."""

    def accept(value) -> bool:
        if isinstance(value, list):
            return bool(value) and all(
                isinstance(item, numbers.Real) and not isinstance(item, bool) and check(float(item))
                for item in value
            )
        return check(value)

    return accept, f"{allowed}, or a list of them"


BUDGET_KINDS = ("flops", "params", "latency", "latency_ms")


@dataclass(frozen=True)
class BudgetSettings(Section):
    """``[budget]``: how much of the base model to keep (ratios of its MACs and/or parameters).

    A limit may be a list (``flops = [0.7, 0.5, 0.3]``): the run then searches once per entry, sharing its
    set-up (:meth:`each`). Lists of several kinds pair up entry by entry and must be equally long; a single
    number applies to every entry."""

    SECTION: ClassVar[str] = "budget"
    flops: float | list | None = setting(None, (float, list, NONE), *_limits(*RATIO))
    params: float | list | None = setting(None, (float, list, NONE), *_limits(*RATIO))
    # measured latency on the [latency] runtime: a ratio of the base model's, and/or milliseconds
    latency: float | list | None = setting(None, (float, list, NONE), *_limits(*RATIO))
    latency_ms: float | list | None = setting(
        None, (float, list, NONE), *_limits(*within(0, math.inf, open_low=True))
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in BUDGET_KINDS:  # TOML integers in a list (flops = [1, 0.5]) become floats
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, [float(item) for item in value])

    def _check_combination(self) -> None:
        lengths = {
            name: len(value) for name in BUDGET_KINDS if isinstance(value := getattr(self, name), list)
        }
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name} has {length}" for name, length in lengths.items())
            self.fail(
                next(iter(lengths)),
                f"budget lists pair up entry by entry and must be equally long ({listed})",
            )
        labels = [budget.label for budget in self.each()] if lengths else []
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            self.fail(next(iter(lengths)), f"budget {repeated[0]} is listed twice")

    @property
    def given(self) -> bool:
        return any(getattr(self, name) is not None for name in BUDGET_KINDS)

    @property
    def uses_latency(self) -> bool:
        return self.latency is not None or self.latency_ms is not None

    @property
    def is_multiple(self) -> bool:
        """Whether any limit is a list: the run searches once per entry (a multi-budget run)."""
        return any(isinstance(getattr(self, name), list) for name in BUDGET_KINDS)

    def each(self) -> list[BudgetSettings]:
        """One single-number budget per entry of the lists (just ``[self]`` when nothing is a list)."""
        if not self.is_multiple:
            return [self]
        count = max(len(value) for name in BUDGET_KINDS if isinstance(value := getattr(self, name), list))
        return [
            BudgetSettings(
                **{
                    name: value[index] if isinstance(value := getattr(self, name), list) else value
                    for name in BUDGET_KINDS
                }
            )
            for index in range(count)
        ]

    @property
    def label(self) -> str:
        """A single budget's name, used for its folder in a multi-budget run: ``flops0.5``,
        ``flops0.5_params0.6``, ``latency_ms12.5``."""
        if self.is_multiple:
            raise ValueError("a list of budgets has no single label; use each()")
        return "_".join(
            f"{name}{getattr(self, name):g}" for name in BUDGET_KINDS if getattr(self, name) is not None
        )

    def labels(self) -> list[str]:
        return [budget.label for budget in self.each()]

    def require(self, what: str) -> None:
        if not self.given:
            raise UserError(
                f"{what}: give a budget (--flops R, --params R, --latency R and/or --latency-ms MS, "
                "or [budget] in the config)"
            )


@dataclass(frozen=True)
class SearchSettings(Section):
    """``[search]``: the particle swarm. Execution settings (workers, backend, scheduler, time limit)
    decide only where and for how long it runs, so they may change when a run is resumed."""

    SECTION: ClassVar[str] = "search"
    particles: int = setting(12, int, *at_least(2))
    # "pso": the particle swarm (seeded by the clustering proposal); "random": uniform random keep
    # ratios, a baseline (no proposal, no uniform candidate), with the same repair, proxy and re-ranking
    engine: str = setting("pso", str, *one_of("pso", "random"))
    # Stop rules (execution: a resumed run may be given a longer one and continues where it stopped).
    # iterations unset: DEFAULT_ITERATIONS, or no iteration limit when a time_limit is given (anytime).
    iterations: int | None = setting(None, (int, NONE), *optional(POSITIVE), execution=True)
    seed: int = setting(0, int, *NON_NEGATIVE)
    topology: str = setting("star", str, *one_of("star", "ring", "von_neumann"))
    neighbors: int = setting(3, int, *POSITIVE)  # ring: neighbours per particle (k); von_neumann: range r
    inertia_start: float = setting(0.729, float, *within(0, 4))  # linear schedule, start -> end
    inertia_end: float = setting(0.4, float, *within(0, 4))
    # the inertia reaches inertia_end after this many iterations and stays there: a fixed horizon, so
    # the trajectory does not depend on when the run stops (a longer run extends a shorter one exactly)
    inertia_iterations: int = setting(30, int, *POSITIVE)
    c1: float = setting(1.49445, float, *within(0, 4))  # pull towards the particle's own best
    c2: float = setting(1.49445, float, *within(0, 4))  # pull towards the neighbourhood's best
    velocity_clamp: float = setting(0.2, float, *within(0, 1, open_low=True))  # keep-ratio units
    boundary: str = setting(
        "nearest", str, *one_of("nearest", "reflective", "shrink", "intermediate", "periodic")
    )  # pyswarms BoundaryHandler strategy ("random" draws numpy's global RNG: not offered)
    velocity_strategy: str = setting("unmodified", str, *one_of("unmodified", "adjust", "invert", "zero"))
    init_spread: float = setting(0.1, float, *within(0, 1))  # particles 2.. start within +-spread
    random_particles: int = setting(2, int, *NON_NEGATIVE)  # of which this many start uniformly random
    # re-seed a particle (uniformly in the bounds, memory reset) once it has stayed within reseed_radius
    # (RMS keep-ratio distance) of the swarm's best for reseed_after iterations; 0: never
    reseed_after: int = setting(3, int, *NON_NEGATIVE)  # 3: bench_engines (noisy landscape, 360+ evaluations)
    reseed_radius: float = setting(0.02, float, *within(0, 1))
    patience: int = setting(0, int, *NON_NEGATIVE)  # iterations without improvement before stopping; 0: off
    # a multi-budget run: each budget's swarm (after the first) also starts from the previous budget's
    # winner, repaired onto its own budget (particle 2); off: every budget searches as if alone
    warm_start: bool = setting(False, bool, later=True)
    criterion: str = setting("l2", str, *one_of(*CRITERIA))  # which channels survive at a width
    tolerance: float = setting(0.01, float, *within(0, 1))  # warn when repair lands further below budget
    workers: int = setting(1, int, *POSITIVE, execution=True)
    backend: str = setting("loky", str, *one_of("loky", "dask", "ray"), execution=True)
    dask_scheduler: str | None = setting(None, (str, NONE), *NON_EMPTY, execution=True)
    scheduler_timeout: float = setting(10.0, float, *within(0.1, 3600), execution=True)
    time_limit: str | float | None = setting(
        None, (str, float, NONE), _is_duration, "a duration like 8h, 90m, 1h30m or 3600", execution=True
    )

    def _check_combination(self) -> None:
        if self.random_particles > self.particles - 2:
            self.fail(
                "random_particles",
                f"{self.random_particles} random particles leave no room for the clustering proposal and "
                f"the uniform particle (particles = {self.particles}: at most {self.particles - 2})",
            )
        if self.topology == "ring" and self.neighbors >= self.particles:
            self.fail("neighbors", f"topology 'ring' needs neighbors < particles ({self.particles})")
        if self.warm_start and self.engine == "random":
            self.fail("warm_start", "random search starts from nothing; warm_start needs engine 'pso'")
        if self.dask_scheduler is not None and self.backend == "ray":
            self.fail("backend", "'ray' and a dask_scheduler address were both given; pick one")

    @property
    def time_limit_seconds(self) -> float | None:
        return parse_duration(self.time_limit, "time_limit")

    @property
    def iteration_limit(self) -> int | None:
        """How many iterations to run: ``iterations`` when set; otherwise none (run until the time limit)
        when a ``time_limit`` is given, else ``DEFAULT_ITERATIONS``."""
        if self.iterations is not None:
            return self.iterations
        return None if self.time_limit is not None else DEFAULT_ITERATIONS


@dataclass(frozen=True)
class ProposeSettings(Section):
    """How ``acp cluster`` proposes widths (a search always uses budget mode on the proxy's images)."""

    SECTION: ClassVar[str] = "propose"
    mode: str = setting("budget", str, *one_of("budget", "dbscan"))
    eps: float | None = setting(None, (float, NONE), *within(0.0, 2.0, open_low=True))
    min_samples: int = setting(5, int, *POSITIVE)  # as in the ACP paper's code
    images: int = setting(256, int, *POSITIVE)  # calibration images from the training split
    criterion: str = _like(SearchSettings, "criterion")

    def _check_combination(self) -> None:
        if self.mode == "dbscan" and self.eps is None:
            self.fail("eps", "mode 'dbscan' needs eps (--eps; the ACP paper used 0.007 on CIFAR)")
        if self.mode == "budget" and self.eps is not None:
            self.fail("eps", "eps is DBSCAN's knob; mode 'budget' takes a flops/params budget instead")


@dataclass(frozen=True)
class ProxySettings(Section):
    """``[proxy]``: how the search scores a candidate (see ``acp.proxy.evaluator`` for the recipe).

    Defaults (benchmarks/RESULTS.md, "Proxy fidelity among top candidates", chosen on the selection slice
    of the training split, not on the validation split): 5 calibration batches of 64 images, 500
    proxy-validation images, scored by the loss -- 3.4x cheaper than the former 20 x 64 / 2,000 / accuracy
    and at least as faithful (Spearman against finetuned accuracy over a PSO run's top candidates 0.37 vs
    0.22; over random candidates the loss score ranked better too, 0.89 vs 0.85); no finetuning, NCHW,
    one thread (scores do not depend on how many workers share the cores). ``channels_last`` is off: it made
    ResNet-20 forwards ~18% cheaper here, but oneDNN's channels-last convolution backward (finetune
    steps) crashed on some pruned shapes with torch 2.14.
    """

    SECTION: ClassVar[str] = "proxy"
    calibration_batches: int = setting(5, int, *NON_NEGATIVE)
    calibration_batch_size: int = setting(64, int, *POSITIVE)
    eval_batch_size: int = setting(500, int, *POSITIVE)
    validation_images: int = setting(500, int, *POSITIVE)  # held out of the training split
    recalibrate_bn: bool = setting(True, bool)
    # "accuracy" scores classifiers, "map50" / "map" detectors, "loss" both (require_task checks which)
    score: str = setting("loss", str, *one_of("accuracy", "loss", "map50", "map"))
    finetune_steps: int = setting(0, int, *NON_NEGATIVE)
    finetune_lr: float = setting(0.01, float, *within(0, math.inf))
    finetune_momentum: float = setting(0.9, float, *within(0, 1, open_high=True))
    finetune_weight_decay: float = setting(5e-4, float, *within(0, math.inf))
    finetune_seed: int = setting(0, int, *NON_NEGATIVE)
    channels_last: bool = setting(False, bool)
    threads: int = setting(1, int, *POSITIVE)  # torch threads in an evaluation (scores depend on it)
    cache_size: int = setting(100_000, int, *NON_NEGATIVE, execution=True)  # results kept per evaluator

    def _check_combination(self) -> None:
        if self.finetune_steps and self.finetune_lr <= 0:
            self.fail("finetune_lr", "must be > 0 when finetune_steps > 0")
        if self.recalibrate_bn and self.calibration_batches == 0:
            self.fail("calibration_batches", "must be >= 1 when recalibrate_bn is true")
        if self.finetune_steps and self.calibration_batches == 0:
            self.fail("calibration_batches", "finetune_steps need calibration batches (their images)")

    # the scores each task's proxy computes (acp.proxy.evaluator / acp.proxy.detection)
    TASK_SCORES: ClassVar[dict[str, tuple[str, ...]]] = {
        "classification": ("accuracy", "loss"),
        "detection": ("map50", "map", "loss"),
    }

    @property
    def calibration_images(self) -> int:
        return self.calibration_batches * self.calibration_batch_size

    def require_task(self, task: str) -> ProxySettings:
        """These settings, when ``score`` is one the ``task``'s proxy computes; else a UserError naming
        ``[proxy].score``. The one check of the task/score combination: every evaluator calls it."""
        if task not in self.TASK_SCORES:
            raise ValueError(f"unknown proxy task {task!r}; known: {', '.join(self.TASK_SCORES)}")
        allowed = self.TASK_SCORES[task]
        if self.score not in allowed:
            scored_by = [other for other, scores in self.TASK_SCORES.items() if self.score in scores]
            self.fail(
                "score",
                f"{self.score!r} scores {' and '.join(scored_by)} models, not {task}; a {task} proxy is "
                f"scored by {one_of(*allowed)[1]}",
            )
        return self


@dataclass(frozen=True)
class RerankSettings(Section):
    """``[rerank]``: before ``best_arch.json`` is written, the ``finalists`` best distinct candidates by
    proxy score are scored again by a more careful proxy -- ``finetune_steps`` SGD steps (the [proxy]
    finetune_* optimizer) on the calibration images, then BatchNorm recalibration, then the loss or
    accuracy on ``validation_images`` training images the search's proxy never scored on -- and the best
    of them wins. A single proxy score is noisy; the best of hundreds is partly luck (winner's curse).
    ``finalists = 0`` turns re-ranking off."""

    SECTION: ClassVar[str] = "rerank"
    # defaults from bench_top_fidelity: 20 steps ranked best of 20/50/100 (100 steps overfit the 1,280
    # calibration images); each finalist costs ~7 search evaluations
    finalists: int = setting(5, int, *NON_NEGATIVE)
    finetune_steps: int = setting(20, int, *NON_NEGATIVE)
    # batches of [proxy].calibration_batch_size training images for the finetune steps (cycled) and the
    # BatchNorm recalibration; their own slice, so a cheap search proxy does not starve the finalists
    calibration_batches: int = setting(20, int, *POSITIVE)
    validation_images: int = setting(2000, int, *POSITIVE)  # disjoint from the proxy's validation images
    score: str = _like(ProxySettings, "score", default="loss")

    def proxy_settings(self, proxy: ProxySettings) -> ProxySettings:
        """The [proxy] settings of a finalist evaluation."""
        return proxy.replace(
            finetune_steps=self.finetune_steps,
            calibration_batches=self.calibration_batches,
            validation_images=self.validation_images,
            score=self.score,
        )


@dataclass(frozen=True)
class Schedule(Section):
    """How to train (``acp train``; ``FinetuneSettings.schedule()`` for retraining a pruned model).

    SGD with (Nesterov) momentum, weight decay, label smoothing, a cosine / one-cycle / constant learning
    rate; ``distill_*`` weigh the distillation loss when a teacher is given.
    """

    SECTION: ClassVar[str] = "train"
    epochs: int = setting(30, int, *POSITIVE)
    batch_size: int = setting(128, int, *POSITIVE)
    lr: float = setting(0.1, float, *within(0, 10, open_low=True, open_high=True))
    momentum: float = setting(0.9, float, *within(0, 1, open_high=True))
    nesterov: bool = setting(True, bool)
    weight_decay: float = setting(5e-4, float, *within(0, math.inf))
    schedule: str = setting("cosine", str, *one_of(*SCHEDULES))
    warmup_fraction: float = setting(0.15, float, *within(0, 1, open_high=True))  # one-cycle only
    label_smoothing: float = setting(0.0, float, *within(0, 1, open_high=True))
    augment: bool = setting(True, bool)  # random crop with padding + horizontal flip
    seed: int = setting(0, int, *NON_NEGATIVE)  # shuffling, augmentation, dropout (not the data split)
    channels_last: bool = setting(True, bool)  # used only where safe (acp.train.loop.channels_last_is_safe)
    distill_temperature: float = setting(4.0, float, *within(0, math.inf, open_low=True))
    distill_alpha: float = setting(0.9, float, *within(0, 1))

    def lr_at(self, step: int, total_steps: int) -> float:
        progress = step / max(1, total_steps)
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * progress))
        # one-cycle: linear warm-up from lr/25 to lr, then cosine down to lr/1e4
        if progress < self.warmup_fraction:
            start = self.lr / 25
            return start + (self.lr - start) * progress / self.warmup_fraction
        rest = (progress - self.warmup_fraction) / (1 - self.warmup_fraction)
        low = self.lr / 1e4
        return low + 0.5 * (self.lr - low) * (1 + math.cos(math.pi * rest))


@dataclass(frozen=True)
class LatencySettings(Section):
    """``[latency]``: where latency is measured for a latency budget, ``acp latency`` and ``acp info``.

    A per-layer table is measured on this machine (``grid_points`` widths per axis of every layer
    geometry, ``rounds`` interleaved rounds, minimum kept) and fitted to ``calibration_models`` whole
    models; it is cached under ``cache_dir`` (default: ``~/.cache/acp/latency``), keyed by everything
    it depends on (see ``acp.latency.cache``). The input size is [model].input_size. The ``verify_*``
    settings do not change the table, only what a search does with its winner.
    """

    SECTION: ClassVar[str] = "latency"
    runtime: str = setting("torch", str, *one_of("torch", "torchscript", "onnxruntime"))
    batch_size: int = setting(1, int, *POSITIVE)
    threads: int = setting(1, int, *POSITIVE)  # pinned while measuring; deploy with the same count
    grid_points: int = setting(8, int, *at_least(2))
    calibration_models: int = setting(12, int, *at_least(3))
    rounds: int = setting(3, int, *POSITIVE)
    min_seconds: float = setting(0.02, float, *within(0, 10))  # per timed visit of a table point
    seed: int = setting(0, int, *NON_NEGATIVE)  # calibration widths and visiting order
    cache_dir: str | None = setting(None, (str, NONE), *NON_EMPTY, path=True, execution=True)
    # a search under a latency budget measures its winner against the base model (verify_rounds
    # interleaved rounds, ratio paired by round) and shrinks it until measured <= budget x
    # (1 + verify_tolerance), bracketing the budget so an overshoot grows back, measuring at most
    # verify_steps times (acp.latency.verify)
    verify_winner: bool = setting(True, bool)
    verify_tolerance: float = setting(0.02, float, *within(0, 1))
    verify_steps: int = setting(6, int, *POSITIVE)
    verify_rounds: int = setting(20, int, *POSITIVE)


@dataclass(frozen=True)
class FinetuneSettings(Section):
    """``[finetune]``: retraining the searched architecture from the base weights.

    The recipe fields are declared like ``Schedule``'s; only the defaults that differ for finetuning (a
    lower learning rate) are stated here. ``threads``: torch threads while training (None: every core
    available, ``acp.threads.available_cores``; measured trade-off in ``acp.threads``).
    """

    SECTION: ClassVar[str] = "finetune"
    epochs: int = _like(Schedule, "epochs")
    batch_size: int = _like(Schedule, "batch_size")
    lr: float = _like(Schedule, "lr", default=0.02)
    momentum: float = _like(Schedule, "momentum")
    weight_decay: float = _like(Schedule, "weight_decay")
    schedule: str = _like(Schedule, "schedule")
    label_smoothing: float = _like(Schedule, "label_smoothing")
    augment: bool = _like(Schedule, "augment")
    distill: bool = setting(False, bool)  # knowledge distillation from the unpruned model
    temperature: float = _like(Schedule, "distill_temperature")
    alpha: float = _like(Schedule, "distill_alpha")
    seed: int = _like(Schedule, "seed")
    threads: int | None = setting(None, (int, NONE), *POSITIVE, execution=True)  # None: every core

    def to_schedule(self, epochs: int | None = None) -> Schedule:
        return Schedule(
            epochs=self.epochs if epochs is None else epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            label_smoothing=self.label_smoothing,
            augment=self.augment,
            seed=self.seed,
            distill_temperature=self.temperature,
            distill_alpha=self.alpha,
        )


# --- a whole run configuration ---------------------------------------------------------------------

SECTIONS: dict[str, type[Section]] = {
    section.SECTION: section
    for section in (
        ModelSettings,
        TaskSettings,
        DataSettings,
        SpaceSettings,
        BudgetSettings,
        FinetuneSettings,
        SearchSettings,
        ProxySettings,
        RerankSettings,
        LatencySettings,
    )
}


@dataclass(frozen=True)
class RunSettings:
    """A run configuration: every TOML section as its settings object, and where it came from."""

    model: ModelSettings
    task: TaskSettings = field(default_factory=TaskSettings)
    data: DataSettings = field(default_factory=DataSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    rerank: RerankSettings = field(default_factory=RerankSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    source: str = field(default="<config>", compare=False)  # a file name, for messages

    def __post_init__(self) -> None:
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise UserError(f"{self.source}: [{name}] must be {section.__name__}")
        if self.model.name is None:
            raise UserError(f"{self.source}: [model].name is required")

    @classmethod
    def from_document(
        cls, document: Mapping, *, source: str = "<config>", base_dir: Path | None = None
    ) -> RunSettings:
        if not isinstance(document, Mapping):
            raise UserError(f"{source}: a config must be a TOML table")
        for name in document:
            if name not in SECTIONS:
                raise UserError(f"{source}: unknown section [{name}]{_hint(name, SECTIONS)}")
        sections = {
            name: section.from_table(document.get(name, {}), source=source, base_dir=base_dir)
            for name, section in SECTIONS.items()
        }
        return cls(**sections, source=source)

    def replace(self, **sections) -> RunSettings:
        return dataclasses.replace(self, **sections)

    def with_budget(
        self,
        *,
        flops: float | list | None = None,
        params: float | list | None = None,
        latency: float | list | None = None,
        latency_ms: float | list | None = None,
    ) -> RunSettings:
        """A budget given on the command line replaces the config's whole ``[budget]`` (a list: several
        budgets in one run)."""
        limits = {"flops": flops, "params": params, "latency": latency, "latency_ms": latency_ms}
        if all(value is None for value in limits.values()):
            return self
        return self.replace(budget=BudgetSettings(**limits))

    def for_budget(self, label: str) -> RunSettings | None:
        """The settings of one budget of a multi-budget run, by its label (``flops0.5``); None when the run
        has no budget list or no such entry."""
        if not self.budget.is_multiple:
            return None
        return next((self.replace(budget=b) for b in self.budget.each() if b.label == label), None)

    def to_document(self) -> dict:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def to_toml(self) -> str:
        """The settings as TOML (None values are omitted, as TOML has no null)."""
        return dump_toml(self.to_document())

    def fingerprint(self) -> dict:
        """What a resumed run must agree on (every section without its execution settings)."""
        return {name: getattr(self, name).fingerprint() for name in SECTIONS}

    def first_difference(self, other: RunSettings) -> tuple[str, Any, Any] | None:
        """``("[section].key", mine, theirs)`` for the first fingerprint difference, or None."""
        mine, theirs = self.fingerprint(), other.fingerprint()
        for section in SECTIONS:
            for key in mine[section]:
                if mine[section][key] != theirs[section][key]:
                    return f"[{section}].{key}", mine[section][key], theirs[section][key]
        return None


def load_settings(path: str | os.PathLike) -> RunSettings:
    """Read and check a TOML run configuration."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: TOML syntax error: {error}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise UserError(f"config file {path} cannot be read: {error.strerror or error}") from None
    return RunSettings.from_document(document, source=str(path), base_dir=path.resolve().parent)


def settings_for_model(name: str, **model_fields: Any) -> RunSettings:
    """Settings for a bare model name (``acp info resnet20_cifar``)."""
    source = f"model {name!r}"
    try:
        model = ModelSettings(name=name, **model_fields)
    except UserError as error:
        raise UserError(f"{source}: {error}") from None
    return RunSettings(model=model, source=source)


# --- TOML writing ----------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_toml(document: Mapping[str, Any]) -> str:
    """Serialize ``{section: {key: value}}`` to TOML (None values are omitted)."""
    lines: list[str] = []
    for section, fields_ in document.items():
        lines.append(f"[{_toml_key(section)}]")
        for key, value in fields_.items():
            if value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: object) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are valid in TOML basic strings; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, datetime.date | datetime.time):  # TOML date/time literals (kwargs may hold them)
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
