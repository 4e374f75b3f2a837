"""The latency table of a run configuration: measured (or read from the cache) for ``acp latency``,
a search under a latency budget, ``acp info`` and ``acp finetune``'s measured latency.

A search copies the table it used into its run directory (``latency_table.json``), and a resumed search
reads that copy, so its predictions -- and therefore its repaired candidates -- are the interrupted
run's, bit for bit, whatever happened to the cache in between.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acp.errors import UserError
from acp.fileio import atomic_write_json
from acp.latency import LatencyModel, load_or_build
from acp.workflows import rundir

log = logging.getLogger(__name__)


def identity_document(identity) -> dict:
    return {
        "name": identity.name,
        "num_classes": identity.num_classes,
        "input_size": list(identity.input_size),
        "kwargs": dict(identity.kwargs),
    }


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bars = []

    def start(total: int, what: str):
        for bar in bars:
            bar.close()
        bar = tqdm(total=total, desc=f"latency: {what}", unit="timing", leave=False)
        bars.append(bar)
        return bar.update

    return start


def latency_model_for(
    problem, *, rebuild: bool = False, progress: bool = False
) -> tuple[LatencyModel, Path, bool]:
    """(table, its cache file, whether it came from the cache) for ``problem``'s [latency] settings."""
    latency, path, from_cache = load_or_build(
        problem.model,
        problem.space,
        identity_document(problem.identity),
        problem.settings.latency,
        rebuild=rebuild,
        progress=_progress_bar(progress),
    )
    log.info(
        "latency table %s %s (%s, batch %d, %d threads): base %.3g ms predicted, %.3g ms measured",
        path,
        "read from the cache" if from_cache else f"measured in {latency.build_seconds:.0f} s",
        latency.key["runtime"],
        latency.key["batch_size"],
        latency.key["threads"],
        latency.base_ms,
        latency.base_measured_ms,
    )
    return latency, path, from_cache


def cached_latency_model(problem) -> LatencyModel | None:
    """The table of ``problem``'s [latency] settings if the cache already holds it (nothing is measured)."""
    from acp.latency.cache import cache_file, default_latency_cache, key_for, load_cached

    settings = problem.settings.latency
    key = key_for(problem.space, identity_document(problem.identity), settings)
    return load_cached(cache_file(settings.cache_dir or default_latency_cache(), key), key)


def search_latency_model(problem, run_dir: Path, *, resume: bool, progress: bool) -> LatencyModel | None:
    """The table a search predicts with: None without a latency budget; the run directory's own copy on
    resume; otherwise the cached (or newly measured) table."""
    if not problem.settings.budget.uses_latency:
        return None
    stored = Path(run_dir) / rundir.LATENCY_FILE
    if resume and stored.is_file():
        try:
            latency = LatencyModel.from_dict(json.loads(stored.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise UserError(f"{stored}: unreadable latency table ({error})") from None
    else:
        latency, _, _ = latency_model_for(problem, progress=progress)
    latency.check_space(problem.space)
    return latency


def write_search_latency(run_dir: Path, latency: LatencyModel | None) -> None:
    if latency is not None:
        atomic_write_json(Path(run_dir) / rundir.LATENCY_FILE, latency.to_dict())


def winner_meter(problem):
    """The meter :func:`measured_winner` times with: the budget's runtime, batch and threads, in
    ``verify_rounds`` interleaved rounds."""
    import dataclasses

    from acp.latency.cache import timing_of
    from acp.latency.table import RuntimeMeter

    options = problem.settings.latency
    return RuntimeMeter(
        problem.model,
        problem.space,
        runtime=options.runtime,
        batch_size=options.batch_size,
        threads=options.threads,
        timing=dataclasses.replace(timing_of(options), rounds=options.verify_rounds),
        seed=options.seed,
    )


def measured_winner(problem, budget, result, run_dir: Path, *, architecture, evaluators):
    """The search's winner measured against the base model on the budget's runtime and, when it is slower
    than the budget, shrunk until it is not (:mod:`acp.latency.verify`); ``best_arch.json`` is rewritten
    with the widths kept, what was measured (its ``latency`` record) and their proxy scores. A winner
    already measured (a resumed, finished run) is returned as it is."""
    import dataclasses
    from datetime import UTC, datetime

    from acp.latency.verify import meet_measured_budget
    from acp.search.study import BEST_ARCH_FILE

    arch = result.architecture
    if arch is None or (arch.latency or {}).get("measured_ms") is not None:
        return result
    options = problem.settings.latency
    check = meet_measured_budget(
        budget,
        winner_meter(problem).model_rounds,
        list(arch.widths.values()),
        tolerance=options.verify_tolerance,
        steps=options.verify_steps,
    )
    for line in check.lines():
        (log.info if check.met else log.warning)("%s", line)
    provenance = {key: value for key, value in arch.provenance.items() if value is not None}
    if check.shrunk:
        proxy, finalist = evaluators
        provenance["proxy_score"] = _score(proxy, check.widths)
        if finalist is not None and provenance.get("finalist_score") is not None:
            provenance["finalist_score"] = _score(finalist, check.widths)
    provenance["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    measured = architecture(
        check.widths.tolist(),
        budget=arch.budget,
        provenance=provenance,
        latency={**budget.latency_record(check.widths), **check.record()},
    )
    measured.save(Path(run_dir) / BEST_ARCH_FILE)
    return dataclasses.replace(result, architecture=measured, latency_check=check)


def _score(evaluator, widths) -> float | None:
    score = evaluator.evaluate(widths.tolist()).score
    return float(score) if np.isfinite(score) else None


@dataclass(frozen=True)
class LatencyReport:
    """What ``acp latency`` prints."""

    model: LatencyModel
    path: Path
    from_cache: bool
    group_shares: list[tuple[str, float, float]]  # (group id, share of base latency, share of base MACs)
    rounding: tuple[int, dict[int, float], tuple[str, ...]] | None = None  # step, costs, scanned layers

    def lines(self) -> list[str]:
        model, key = self.model, self.model.key
        calibration = self.model.calibration
        errors = [abs(c["predicted_ms"] - c["measured_ms"]) / c["measured_ms"] for c in calibration]
        source = "read from the cache" if self.from_cache else f"measured in {model.build_seconds:.0f} s"
        lines = [
            f"latency table: {self.path} ({source})",
            f"runtime {key['runtime']} ({key['versions']}), batch {key['batch_size']}, {key['threads']} "
            f"thread(s), input {'x'.join(map(str, key['input_shape']))}, CPU {key['cpu']}",
            f"base model: {model.base_measured_ms:.3f} ms measured, {model.base_ms:.3f} ms predicted; "
            f"{len(model.tables)} layer tables, {sum(t.measured_ms.size for t in model.tables)} points, "
            f"timing noise {model.noise:.1%}",
        ]
        if errors:
            lines.append(
                f"fit on {len(errors)} whole models: median error {np.median(errors):.1%}, "
                f"max {max(errors):.1%} (ms = {model.coefficients[0]:.3g} x compute tables + "
                f"{model.coefficients[1]:.3g} x element-wise tables + {model.coefficients[2]:.3g} x million "
                f"other elements + {model.coefficients[3]:.3g})"
            )
        if self.rounding is not None:
            step, costs, scanned = self.rounding
            spelled = ", ".join(f"{r}: +{cost:.1%}" for r, cost in costs.items())
            lines.append(
                f"suggested [space] round_to = {step} (extra time of rounding every width up to a multiple, "
                f"worst of {', '.join(scanned)}: {spelled})"
            )
        lines.append("group                              latency share   MACs share")
        for group_id, latency_share, macs_share in self.group_shares:
            lines.append(f"{group_id:<34} {latency_share:>12.1%} {macs_share:>12.1%}")
        return lines


def group_shares(latency: LatencyModel, space) -> list[tuple[str, float, float]]:
    """Per group: the share of the base latency and of the base MACs that pruning it *away* would save,
    measured as full width minus minimum width of that group alone (other groups at full width)."""
    full = space.full_widths()
    base_ms = latency.base_ms
    base_macs, _ = space.cost(full)
    shares = []
    for index, group in enumerate(space.groups):
        narrow = full.copy()
        narrow[index] = group.min_width
        macs, _ = space.cost(narrow)
        saved_ms = base_ms - float(latency(narrow))
        shares.append((group.id, saved_ms / base_ms, (base_macs - macs) / base_macs))
    return shares


def measure_table(
    settings, *, rebuild: bool = False, progress: bool = True, suggest_round_to: bool = False
) -> LatencyReport:
    """``acp latency CONFIG``: build (or read) the table of ``settings`` and describe it; optionally scan
    the heaviest layers width by width for latency cliffs and suggest ``[space].round_to``."""
    from acp.latency.rounding import rounding_scan
    from acp.latency.rounding import suggest_round_to as suggest
    from acp.workflows.problem import load_problem

    problem = load_problem(settings)  # the weights do not change the time a forward pass takes
    latency, path, from_cache = latency_model_for(problem, rebuild=rebuild, progress=progress)
    rounding = None
    if suggest_round_to:
        from acp.latency.cache import timing_of
        from acp.latency.table import RuntimeMeter

        if problem.space.settings.get("round_to", 1) != 1:
            raise UserError("--suggest-round-to scans every width: use a config with [space] round_to = 1")
        options = settings.latency
        meter = RuntimeMeter(
            problem.model,
            problem.space,
            runtime=options.runtime,
            batch_size=options.batch_size,
            threads=options.threads,
            timing=timing_of(options),
            seed=options.seed,
            progress=_progress_bar(progress),
        )
        scan = rounding_scan(latency, problem.space, meter)
        step, costs = suggest(scan, narrowest=int(problem.space.full_widths().min()))
        rounding = (step, costs, scan.layers)
    return LatencyReport(latency, path, from_cache, group_shares(latency, problem.space), rounding)
