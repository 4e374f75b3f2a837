"""The on-disk cache of latency tables: measured once per machine, runtime and model, then reused.

A table is valid only for what it was measured on, so its *key* holds all of it: the model (name, classes,
keyword arguments, input size), the search space (group ids and full widths, round_to, min_keep, ignored
layers, and every compute layer's geometry), the runtime and its versions (torch, onnxruntime), batch
size, thread count, the CPU model, the memory allocator's setting, and how it was measured (grid points,
calibration models, timing, seed). The file name is a hash of the key and the file repeats the key, so a
changed key never loads a stale table: it is measured again and written beside the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from acp.data import default_cache_dir
from acp.errors import UserError
from acp.fileio import atomic_write_json
from acp.latency.allocator import steady_allocator
from acp.latency.runtimes import Timing, require_runtime, runtime_version
from acp.latency.table import FORMAT, LatencyModel, RuntimeMeter, build_latency_model
from acp.settings import LatencySettings

log = logging.getLogger(__name__)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def latency_key(
    space,
    model_identity: dict,
    *,
    runtime: str,
    batch_size: int,
    threads: int,
    grid_points: int,
    calibration_models: int,
    timing: Timing,
    seed: int,
) -> dict:
    """Everything a latency table depends on (JSON-ready)."""
    geometry = json.dumps(
        [[layer.module, list(map(str, layer.geometry()))] for layer in space.compute_layers]
    )
    return {
        "format": FORMAT,
        "model": model_identity,
        "groups": list(space.ids),
        "full_widths": [int(width) for width in space.full_widths()],
        "space": {key: space.settings[key] for key in sorted(space.settings)},
        "input_shape": list(space.input_shape[1:]),
        "layers": hashlib.sha256(geometry.encode()).hexdigest()[:16],
        "runtime": runtime,
        "versions": runtime_version(runtime),
        "batch_size": int(batch_size),
        "threads": int(threads),
        "cpu": cpu_model(),
        "allocator": steady_allocator(),
        "grid_points": int(grid_points),
        "calibration_models": int(calibration_models),
        "timing": asdict(timing),
        "seed": int(seed),
    }


def cache_file(cache_dir: str | os.PathLike, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    name = str(key["model"].get("name", "model")).replace("/", "_").replace(":", "_")
    return Path(cache_dir) / f"latency-{name}-{key['runtime']}-b{key['batch_size']}-{digest}.json"


def load_cached(path: Path, key: dict) -> LatencyModel | None:
    """The cached model at ``path`` if it exists, parses and was measured under exactly ``key``."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        model = LatencyModel.from_dict(document)
    except (OSError, ValueError, UserError) as error:
        log.warning("ignoring unreadable latency table %s: %s", path, error)
        return None
    if model.key != json.loads(json.dumps(key)):
        return None
    return model


def timing_of(settings: LatencySettings) -> Timing:
    return Timing(rounds=settings.rounds, min_seconds=settings.min_seconds)


def key_for(space, model_identity: dict, settings: LatencySettings) -> dict:
    return latency_key(
        space,
        model_identity,
        runtime=settings.runtime,
        batch_size=settings.batch_size,
        threads=settings.threads,
        grid_points=settings.grid_points,
        calibration_models=settings.calibration_models,
        timing=timing_of(settings),
        seed=settings.seed,
    )


def default_latency_cache() -> Path:
    return default_cache_dir() / "latency"


def load_or_build(
    model,
    space,
    model_identity: dict,
    settings: LatencySettings,
    *,
    rebuild: bool = False,
    progress: Callable | None = None,
    meter=None,
) -> tuple[LatencyModel, Path, bool]:
    """(latency model, its cache file, whether it came from the cache). ``model`` is only read (pruned
    copies are timed); its weights do not matter. ``meter`` replaces the runtime's timing (tests)."""
    require_runtime(settings.runtime)
    key = key_for(space, model_identity, settings)
    path = cache_file(settings.cache_dir or default_latency_cache(), key)
    cached = None if rebuild else load_cached(path, key)
    if cached is not None:
        return cached, path, True
    meter = meter or RuntimeMeter(
        model,
        space,
        runtime=settings.runtime,
        batch_size=settings.batch_size,
        threads=settings.threads,
        timing=timing_of(settings),
        seed=settings.seed,
        progress=progress,
    )
    built = build_latency_model(
        space,
        meter,
        key=json.loads(json.dumps(key)),
        grid_points=settings.grid_points,
        calibration_models=settings.calibration_models,
        seed=settings.seed,
    )
    try:
        atomic_write_json(path, built.to_dict())
    except OSError as error:
        log.warning("could not write latency table %s: %s", path, error)
    return built, path, False
