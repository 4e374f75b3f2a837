"""Search settings: defaults and validation in one place (the ``[search]`` config section / CLI flags).

Settings split in two kinds. *Search* settings decide which candidates are evaluated; a resumed run must
use the same ones (``fingerprint``). *Execution* settings (workers, backend, scheduler address, time
limit) only decide where and for how long; they may change between a run and its resume, because the
results do not depend on them.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from acp.errors import UserError

TOPOLOGIES = ("star", "ring", "von_neumann")
BOUNDARY_STRATEGIES = ("nearest", "reflective", "shrink", "intermediate", "periodic")
VELOCITY_STRATEGIES = ("unmodified", "adjust", "invert", "zero")
BACKENDS = ("loky", "dask", "ray")
EXECUTION_FIELDS = ("workers", "backend", "dask_scheduler", "time_limit", "scheduler_timeout")
_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?"
    r"\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$"
)


@dataclass(frozen=True)
class SearchSettings:
    """Everything that configures a search (see ``docs``/README for the meaning of each field)."""

    particles: int = 12
    iterations: int = 30
    seed: int = 0
    topology: str = "star"
    neighbors: int = 3  # ring: neighbours per particle (k); von_neumann: range r
    inertia_start: float = 0.729  # linear inertia schedule, start -> end over the iterations
    inertia_end: float = 0.4
    c1: float = 1.49445  # cognitive coefficient (pull towards the particle's own best)
    c2: float = 1.49445  # social coefficient (pull towards the neighbourhood's best)
    velocity_clamp: float = 0.2  # max |velocity| per dimension, in keep-ratio units
    boundary: str = "nearest"  # pyswarms BoundaryHandler strategy ("random" draws global RNG: refused)
    velocity_strategy: str = "unmodified"  # pyswarms VelocityHandler strategy; "adjust" is done by acp
    init_spread: float = 0.1  # particles 2.. start within +-spread (ratio) of the clustering proposal
    random_particles: int = 2  # of which this many start at uniformly random ratios instead
    patience: int = 0  # stop after this many iterations without improvement (0: never)
    criterion: str = "l2"  # which channels survive at a width (acp.criteria.DEFAULT_CRITERION)
    tolerance: float = 0.01  # budget repair aims within this fraction below the target (reported)
    # execution settings
    workers: int = 1
    backend: str = "loky"
    dask_scheduler: str | None = None
    scheduler_timeout: float = 10.0
    time_limit: str | None = None  # "8h", "90m", "1h30m", "3600" (seconds)

    def __post_init__(self) -> None:
        _integer("particles", self.particles, 2)
        _integer("iterations", self.iterations, 1)
        _integer("seed", self.seed, 0)
        _integer("neighbors", self.neighbors, 1)
        _integer("random_particles", self.random_particles, 0)
        _integer("patience", self.patience, 0)
        _integer("workers", self.workers, 1)
        _choice("topology", self.topology, TOPOLOGIES)
        _choice("boundary", self.boundary, BOUNDARY_STRATEGIES)
        _choice("velocity_strategy", self.velocity_strategy, VELOCITY_STRATEGIES)
        _choice("backend", self.backend, BACKENDS)
        for name in ("inertia_start", "inertia_end", "c1", "c2"):
            _real(name, getattr(self, name), 0.0, 4.0)
        _real("velocity_clamp", self.velocity_clamp, 1e-6, 1.0)
        _real("init_spread", self.init_spread, 0.0, 1.0)
        _real("tolerance", self.tolerance, 0.0, 1.0)
        _real("scheduler_timeout", self.scheduler_timeout, 0.1, 3600.0)
        if not isinstance(self.criterion, str) or not self.criterion:
            raise UserError(f"search settings: criterion must be a criterion name, got {self.criterion!r}")
        if self.random_particles > self.particles - 1:
            raise UserError(
                f"search settings: random_particles={self.random_particles} leaves no room for the "
                f"clustering proposal (particles={self.particles})"
            )
        if self.topology == "ring" and self.neighbors >= self.particles:
            raise UserError(
                "search settings: topology 'ring' needs neighbors < particles, "
                f"got neighbors={self.neighbors}"
                f", particles={self.particles}"
            )
        if self.dask_scheduler is not None and not isinstance(self.dask_scheduler, str):
            raise UserError(
                f"search settings: dask_scheduler must be an address, got {self.dask_scheduler!r}"
            )
        parse_duration(self.time_limit, "time_limit")  # validates the duration text

    @property
    def time_limit_seconds(self) -> float | None:
        return parse_duration(self.time_limit, "time_limit")

    def fingerprint(self) -> dict:
        """The settings that decide which candidates are evaluated (must match on resume)."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_FIELDS}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping | None, **overrides) -> SearchSettings:
        """From a ``[search]`` config section (unknown keys rejected) plus non-None overrides (CLI flags)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"[search]: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        settings = cls(**{k: v for k, v in values.items() if v is not None})
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings


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


def _integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise UserError(f"search settings: {name} must be an integer >= {low}, got {value!r}")


def _real(name: str, value: object, low: float, high: float) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise UserError(f"search settings: {name} must be a number in [{low:g}, {high:g}], got {value!r}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"search settings: {name} must be one of {', '.join(allowed)}, got {value!r}")
