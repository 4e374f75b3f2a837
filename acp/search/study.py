"""The search loop: ask -> repair -> evaluate -> record -> tell -> checkpoint, resumable at any point.

A :class:`Study` ties together objects that know nothing of each other's internals: the swarm proposes
keep ratios (:mod:`acp.search.pso`), the budget repairs them (:mod:`acp.core.budget`), a backend runs
the evaluator on them (:mod:`acp.search.backends`), and the store records everything
(:mod:`acp.search.store`). The run directory (contract, DESIGN.md) holds ``history.sqlite``,
``checkpoint.json`` (+ ``checkpoint.prev.json``), ``best_arch.json`` and, at the end, ``report.png``.

``on_iteration(state, status)``, when given, is called after every checkpoint of the loop with a copy of the
study's state (as checkpointed) and ``"running"``, and once more when ``run()`` ends (``"finished"``) or is
interrupted (``"interrupted"``). It sees only what is already on disk, so whatever it does (the workflow
writes ``report.html``) cannot change the search; an exception it raises is logged as a warning.

One search of a multi-budget run (:func:`acp.workflows.search.search`) is a Study whose ``run_dir`` is its
budget's folder and whose ``history`` is the run's shared ``history.sqlite``, seen through its ``budget``
label (:class:`acp.search.store.History`); it may be given the run's ``backend`` so the workers are
started once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from acp.core.budget import Budget
from acp.errors import UserError
from acp.search import store
from acp.search.backends import make_backend
from acp.search.encoding import KeepRatioEncoding
from acp.search.pso import ParticleSwarm
from acp.search.random_search import RandomSearch
from acp.settings import SearchSettings

log = logging.getLogger(__name__)

BEST_ARCH_FILE = "best_arch.json"
REPORT_FILE = "report.png"
RUN_STATE_FILES = (store.HISTORY_FILE, store.CHECKPOINT_FILE, store.PREVIOUS_CHECKPOINT_FILE, BEST_ARCH_FILE)


@dataclass
class SearchResult:
    """What a search found. ``proposal``/``uniform`` are the evaluation records of the clustering proposal
    and the uniform-ratio baseline (particles 0 and 1 of iteration 0, both repaired onto the budget)."""

    run_dir: Path
    group_ids: tuple[str, ...]
    best: dict | None  # {"score", "widths", "macs", "params", "iteration", "particle", "accuracy", "loss"}
    proposal: dict | None
    uniform: dict | None
    iterations: int
    evaluations: int
    failed: int
    stopped: str  # "iterations" | "patience" | "time_limit" | "interrupted"
    best_per_iteration: list[float]
    base_macs: int
    base_params: int
    budget: dict
    seconds: float
    architecture: object | None = field(default=None, repr=False)
    # re-ranking: ``best`` is the finalist that won (with ``finalist_score`` etc.); ``proxy_best`` the
    # highest proxy score (the same candidate when re-ranking is off); ``finalists`` every finalist
    proxy_best: dict | None = None
    finalists: list[dict] = field(default_factory=list)
    elapsed_per_iteration: list[float] = field(default_factory=list)
    # under a latency budget: the winner measured on the runtime (acp.latency.verify.MeasuredCheck)
    latency_check: object | None = None

    @property
    def best_widths(self) -> dict[str, int] | None:
        return None if self.best is None else dict(zip(self.group_ids, self.best["widths"]))

    @property
    def best_score(self) -> float | None:
        return None if self.best is None else self.best["score"]

    def summary_lines(self) -> list[str]:
        lines = [f"{'':<22}{'score':>10}{'accuracy':>10}{'MACs':>9}{'params':>9}"]
        rows = [("best (search)", self.best)]
        if self.finalists:
            rows = [("best (re-ranked)", self.best), ("best proxy score", self.proxy_best)]
        for name, record in (
            *rows,
            ("clustering proposal", self.proposal),
            ("uniform ratio", self.uniform),
        ):
            if record is None or record.get("score") is None:
                lines.append(f"{name:<22}{'failed' if record else '-':>10}")
                continue
            accuracy = record.get("accuracy")
            lines.append(
                f"{name:<22}{record['score']:>10.4f}"
                f"{'' if accuracy is None else f'{accuracy:.2%}':>10}"
                f"{record['macs'] / self.base_macs:>9.1%}{record['params'] / self.base_params:>9.1%}"
            )
        lines.append(
            f"{self.evaluations} evaluations ({self.failed} failed) in {self.iterations} iterations, "
            f"{self.seconds:.0f} s; stopped: {self.stopped}; MACs counted as FLOPs"
        )
        if self.finalists:
            scored = [row for row in self.finalists if row.get("finalist_score") is not None]
            rank = _proxy_rank(self.finalists, self.best)
            seconds = sum(row.get("finalist_seconds") or 0.0 for row in self.finalists)
            score = self.best.get("finalist_score")
            lines.append(
                f"re-ranked {len(self.finalists)} finalists ({len(self.finalists) - len(scored)} failed) in "
                f"{seconds:.0f} s; the winner was #{rank} by proxy score"
                + ("" if score is None else f" (finalist score {score:.4f})")
            )
        if self.latency_check is not None:
            lines.extend(self.latency_check.lines())
        return lines


class Study:
    """One search in one run directory. ``run()`` starts it, or continues it when ``resume=True``.

    ``evaluator.evaluate(widths) -> result`` with ``score`` (maximized), ``accuracy``, ``loss``, ``macs``,
    ``params``, ``seconds``, ``status`` (``"ok"`` / ``"failed: ..."``). ``architecture(widths) ->
    Architecture`` (default: ``evaluator.architecture`` when it has one) makes ``best_arch.json``.
    ``fingerprint`` adds anything else a resumed run must agree on (config, weights, data digests).
    """

    def __init__(
        self,
        space,
        evaluator,
        budget: Budget,
        settings: SearchSettings,
        run_dir: str | Path,
        *,
        proposal_widths=None,
        architecture: Callable | None = None,
        fingerprint: dict | None = None,
        progress: bool = False,
        finalist_evaluator=None,
        finalists: int = 0,
        on_iteration: Callable[[dict, str], None] | None = None,
        history: str | Path | None = None,
        budget_label: str | None = None,
        resume_dir: str | Path | None = None,
        warm_widths=None,
    ):
        self.space = space
        # the evaluation history (default run_dir/history.sqlite) and the budget label its rows carry when
        # several searches share it; resume_dir is what `acp search --resume` is given (default run_dir)
        self.history_path = Path(run_dir) / store.HISTORY_FILE if history is None else Path(history)
        self.budget_label = budget_label
        self.resume_dir = Path(run_dir) if resume_dir is None else Path(resume_dir)
        # another search's winner to start particle 2 from (settings.warm_start in a multi-budget run); not
        # in the fingerprint: it only places the first iteration's particles, which a checkpoint restores,
        # and a resume that extends the previous budget's search may change that winner
        self.warm_widths = None if warm_widths is None else np.asarray(warm_widths, dtype=np.int64)
        self.on_iteration = on_iteration
        self._checkpointed: dict | None = None
        self.finalist_evaluator = finalist_evaluator
        self.finalists = int(finalists) if finalist_evaluator is not None else 0
        self.evaluator = evaluator
        self.budget = budget
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.encoding = KeepRatioEncoding(space)
        self.proposal_widths = (
            None if proposal_widths is None else np.asarray(proposal_widths, dtype=np.int64)
        )
        if architecture is None and hasattr(evaluator, "architecture"):
            architecture = evaluator.architecture
        self.architecture = architecture
        self.progress = progress
        self.fingerprint = {
            "search": settings.fingerprint(),
            "budget": budget.as_dict(),
            "groups": [
                [group.id, int(group.full_width), int(group.min_width), int(group.round_to)]
                for group in space.groups
            ],
            "proposal": None if self.proposal_widths is None else self.proposal_widths.tolist(),
            "evaluator": getattr(evaluator, "token", None),
            **(fingerprint or {}),
        }

    # --- public ------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, backend=None) -> SearchResult:
        """Run until a stopping rule fires; Ctrl-C stops after the last checkpoint (KeyboardInterrupt
        propagates, the directory stays resumable). ``backend`` (the caller's, left open): evaluate on it
        instead of starting workers of its own."""
        history = self._open(resume)
        if resume:
            log.info("%s", self._resume_message())
        shared, backend = backend, None
        try:
            # a run stopped by its iteration or time limit continues when resumed with a longer one
            if self.state["stopped"] != "patience" and self._stop_reason() is None:
                self.state["stopped"] = None
                if shared is None:
                    backend = make_backend(
                        self.evaluator,
                        workers=self.settings.workers,
                        backend=self.settings.backend,
                        dask_scheduler=self.settings.dask_scheduler,
                        scheduler_timeout=self.settings.scheduler_timeout,
                    )
                self._loop(history, shared or backend)
            if backend is not None:
                backend.close()
                backend = None
            if self.state["stopped"] is not None:
                self._rerank(history)
            result = self._result(history)
        except KeyboardInterrupt:
            log.warning(
                "interrupted: %s is resumable with `acp search --resume %s`", self.resume_dir, self.resume_dir
            )
            self._notify("interrupted")
            raise
        finally:
            if backend is not None:
                backend.close()
            history.close()
        self._write_report(result)
        self._notify("finished")
        return result

    # --- setup -------------------------------------------------------------------------------------

    def _open(self, resume: bool) -> store.History:
        history_path = self.history_path
        lower, upper = self.encoding.bounds
        proposal = None if self.proposal_widths is None else self.encoding.encode(self.proposal_widths)
        if self.settings.engine == "random":
            self.swarm = RandomSearch(self.settings, lower, upper, proposal=proposal)
        else:
            warm = None if self.warm_widths is None else self.encoding.encode(self.warm_widths)
            self.swarm = ParticleSwarm(self.settings, lower, upper, proposal=proposal, warm=warm)
        if not resume:
            existing = [name for name in RUN_STATE_FILES if (self.run_dir / name).exists()]
            if existing or (self.run_dir.exists() and not self.run_dir.is_dir()):
                what = ", ".join(existing) or "not a directory"
                raise UserError(
                    f"--out {self.run_dir} already holds a search ({what}); "
                    f"pick a new directory or pass --resume {self.run_dir}"
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            history = store.History(history_path, create=True, budget=self.budget_label)
            if self.budget_label is not None and len(history):  # shared history: no rows of ours yet
                history.close()
                raise UserError(f"{history_path} already holds rows of budget {self.budget_label}")
            self.state = {
                "iteration": 0,
                "evaluations": 0,
                "failed": 0,
                "best": None,
                "proposal": None,
                "uniform": None,
                "best_per_iteration": [],
                "since_improvement": 0,
                "elapsed": 0.0,
                "elapsed_per_iteration": [],
                "stopped": None,
                "chosen": None,
            }
            self._checkpoint()
            return history
        if not self.run_dir.is_dir():
            raise UserError(f"--resume {self.resume_dir}: no such run directory")
        checkpoint = store.read_checkpoint(self.run_dir)
        history = store.History(history_path, budget=self.budget_label)
        try:
            self._check_fingerprint(checkpoint["fingerprint"])
            self.swarm.load_state_dict(checkpoint["swarm"])
            self.state = checkpoint["study"]
            self._checkpointed = _jsonable(self.state)
            dropped = history.truncate(self.state["iteration"])
            if dropped:
                log.warning(
                    "dropped %d history rows of an iteration the checkpoint does not cover; "
                    "that iteration is evaluated again",
                    dropped,
                )
            if len(history) != self.state["evaluations"]:
                raise UserError(
                    f"{history.path} has {len(history)} rows but the checkpoint expects "
                    f"{self.state['evaluations']}: the run directory was modified"
                )
        except BaseException:
            history.close()
            raise
        return history

    def _check_fingerprint(self, stored: dict) -> None:
        current = _jsonable(self.fingerprint)
        if stored == current:
            return
        for key in sorted(set(stored) | set(current)):
            if stored.get(key) != current.get(key):
                detail = _first_difference(stored.get(key), current.get(key), key)
                raise UserError(
                    f"--resume {self.resume_dir}: the run was made with a different configuration "
                    f"({detail}); resume with the run's own config.toml or start a new run"
                )

    # --- the loop ----------------------------------------------------------------------------------

    def _loop(self, history: store.History, backend) -> None:
        from tqdm.auto import tqdm

        settings, state = self.settings, self.state
        session_began, session_evaluations = time.perf_counter(), 0
        elapsed_before = state["elapsed"]
        bar = tqdm(
            total=settings.iteration_limit,
            initial=state["iteration"],
            disable=not self.progress,
            unit="iter",
            desc="search",
            dynamic_ncols=True,
            leave=True,
        )
        try:
            while (reason := self._stop_reason()) is None:
                iteration = state["iteration"]
                began = time.perf_counter()
                raw = self.swarm.ask()
                widths = self.budget.repair(raw)
                records = backend.map(widths.tolist())
                rows = self._rows(iteration, widths, records)
                history.add(rows)
                costs = np.array([math.inf if row["score"] is None else -row["score"] for row in rows])
                self.swarm.tell(self.encoding.encode(widths), costs)
                self._update_best(iteration, rows)
                state["iteration"] = iteration + 1
                state["evaluations"] += len(rows)
                state["failed"] += sum(row["score"] is None for row in rows)
                state["elapsed"] = elapsed_before + (time.perf_counter() - session_began)
                state.setdefault("elapsed_per_iteration", []).append(state["elapsed"])
                self._checkpoint()
                self._notify("running")
                session_evaluations += len(rows)
                bar.update(1)
                bar.set_postfix_str(self._postfix(session_evaluations, time.perf_counter() - session_began))
                log.debug("iteration %d done in %.2f s", iteration, time.perf_counter() - began)
        finally:
            bar.close()
        state["stopped"] = reason
        self._checkpoint()

    def _resume_message(self) -> str:
        """What a resume is about to do: continue at iteration k of N, or only finish a stopped run."""
        state, limit = self.state, self.settings.iteration_limit
        of = f" of {limit}" if limit is not None else " (until the time limit)"
        done = f"{state['evaluations']} evaluations done"
        if state["stopped"] == "patience":
            at = f"iteration {state['iteration']}{of}"
            return f"resuming {self.run_dir}: it stopped for patience at {at} ({done})"
        reason = self._stop_reason()
        if reason is None:
            return f"resuming {self.run_dir} at iteration {state['iteration'] + 1}{of} ({done})"
        return (
            f"resuming {self.run_dir}: its {reason.replace('_', ' ')} is reached at iteration "
            f"{state['iteration']}{of} ({done}); pass a larger --iterations or --time-limit to search on"
        )

    def _stop_reason(self) -> str | None:
        state, settings = self.state, self.settings
        limit = settings.iteration_limit
        if limit is not None and state["iteration"] >= limit:
            return "iterations"
        if settings.patience and state["since_improvement"] >= settings.patience:
            return "patience"
        limit = settings.time_limit_seconds
        if limit is not None and state["elapsed"] >= limit:
            return "time_limit"
        return None

    def _rows(self, iteration: int, widths: np.ndarray, records: list[dict]) -> list[dict]:
        macs, params = self.space.cost(widths)
        gaps = self.budget.gap(macs, params, self.budget.predicted_ms(widths))
        far = int(np.sum(gaps > self.settings.tolerance))
        if far:
            log.warning(
                "iteration %d: %d candidates are more than %.1f%% below the budget (rounding)",
                iteration,
                far,
                100 * self.settings.tolerance,
            )
        rows = []
        for particle, (row_widths, record) in enumerate(zip(widths, records)):
            row = dict(record)
            row.update(
                iteration=iteration,
                particle=particle,
                widths=[int(w) for w in row_widths],
                macs=int(macs[particle]),
                params=int(params[particle]),
            )
            rows.append(row)
        return rows

    def _update_best(self, iteration: int, rows: list[dict]) -> None:
        state = self.state
        if iteration == 0 and getattr(self.swarm, "anchors", True):
            state["proposal"], state["uniform"] = _summary(rows[0]), _summary(rows[1])
        improved = False
        for row in rows:
            best = state["best"]
            if row["score"] is not None and (best is None or row["score"] > best["score"]):
                state["best"] = {**_summary(row), "evaluations": state["evaluations"] + row["particle"] + 1}
                improved = True
        state["since_improvement"] = 0 if improved or iteration == 0 else state["since_improvement"] + 1
        best = state["best"]
        state["best_per_iteration"].append(None if best is None else best["score"])
        if improved:
            self._write_best()
            state["best_arch_is_chosen"] = False  # best_arch.json holds the best proxy score until re-ranked

    def _write_best(self, best: dict | None = None, **extra) -> None:
        if self.architecture is None:
            return
        best = best or self.state["best"]
        provenance = {
            "source": "search",
            "seed": self.settings.seed,
            "criterion": self.settings.criterion,
            "evaluations": best["evaluations"],
            "proxy_score": best["score"],
            **extra,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        latency = self.budget.latency_record(np.asarray(best["widths"], dtype=np.int64))
        options = {} if latency is None else {"latency": latency}
        architecture = self.architecture(
            best["widths"], budget=self.budget.as_dict(), provenance=provenance, **options
        )
        architecture.save(self.run_dir / BEST_ARCH_FILE)

    # --- re-ranking the finalists ------------------------------------------------------------------

    def _finalist_candidates(self, history: store.History) -> list[dict]:
        """The ``finalists`` best distinct width vectors by proxy score (earlier evaluation first on
        ties), each as its first history row."""
        best: dict[tuple, dict] = {}
        for number, row in enumerate(history.rows(), start=1):
            key = tuple(row["widths"])
            if row["score"] is not None and key not in best:
                best[key] = {**row, "evaluations": number}
        ranked = sorted(best.values(), key=lambda row: (-row["score"], row["evaluations"]))
        return ranked[: self.finalists]

    def _rerank(self, history: store.History) -> None:
        """Score the finalists with the finalist evaluator (rows recorded in ``history.sqlite`` as they
        come, so an interrupted re-ranking resumes), then make the best of them ``best_arch.json``."""
        state = self.state
        if not self.finalists or state["best"] is None:
            state["chosen"] = None
            return
        token = str(getattr(self.finalist_evaluator, "token", None))
        candidates = self._finalist_candidates(history)
        scored = {tuple(row["widths"]): row for row in history.finalists(token)}
        todo = [row for row in candidates if tuple(row["widths"]) not in scored]
        if todo:
            log.info("re-ranking %d finalists (%d to score)", len(candidates), len(todo))
            backend = make_backend(
                self.finalist_evaluator,
                workers=min(self.settings.workers, len(todo)),
                backend=self.settings.backend,
                dask_scheduler=self.settings.dask_scheduler,
                scheduler_timeout=self.settings.scheduler_timeout,
            )
            try:
                step = max(1, self.settings.workers)
                for start in range(0, len(todo), step):
                    chunk = todo[start : start + step]
                    records = backend.map([row["widths"] for row in chunk])
                    rows = [
                        {
                            **record,
                            "evaluator": token,
                            "widths": row["widths"],
                            "macs": row["macs"],
                            "params": row["params"],
                            "proxy_score": row["score"],
                        }
                        for row, record in zip(chunk, records)
                    ]
                    history.add_finalists(rows)
                    scored.update((tuple(row["widths"]), row) for row in rows)
            finally:
                backend.close()
        finalists = [
            {
                **_summary(row),
                "evaluations": row["evaluations"],
                **_finalist_fields(scored[tuple(row["widths"])]),
            }
            for row in candidates
        ]
        ok = [row for row in finalists if row["finalist_score"] is not None]
        chosen = max(ok, key=lambda row: row["finalist_score"]) if ok else {**state["best"]}
        previous = state.get("chosen")
        state["finalists"], state["chosen"] = finalists, chosen
        self._checkpoint()
        if previous != chosen or not state.get("best_arch_is_chosen"):
            self._write_best(
                chosen,
                finalist_score=chosen.get("finalist_score"),
                finalists=len(finalists),
                proxy_rank=_proxy_rank(finalists, chosen),
            )
            state["best_arch_is_chosen"] = True
            self._checkpoint()

    def _checkpoint(self) -> None:
        store.write_checkpoint(
            self.run_dir,
            {
                "fingerprint": _jsonable(self.fingerprint),
                "swarm": self.swarm.state_dict(),
                "study": self.state,
            },
        )
        self._checkpointed = _jsonable(self.state)  # what on_iteration is shown: the state on disk

    def _notify(self, status: str) -> None:
        if self.on_iteration is None or self._checkpointed is None:
            return
        try:
            self.on_iteration(_jsonable(self._checkpointed), status)
        except Exception as error:  # a report must never cost the user the search
            log.warning("on_iteration (%s) failed: %s", status, error)

    def _postfix(self, evaluations: int, seconds: float) -> str:
        best = self.state["best"]
        if best is None:
            return "no successful evaluation yet"
        return (
            f"best {best['score']:.4f} MACs {best['macs'] / self.space.base_macs:.1%} "
            f"params {best['params'] / self.space.base_params:.1%} "
            f"{evaluations / max(seconds, 1e-9):.2f} eval/s"
        )

    # --- results -----------------------------------------------------------------------------------

    def _result(self, history: store.History) -> SearchResult:
        state = self.state
        architecture = None
        best_path = self.run_dir / BEST_ARCH_FILE
        if best_path.is_file():
            from acp.core.architecture import Architecture

            architecture = Architecture.load(best_path)
        chosen = state.get("chosen") if self.finalists else None
        return SearchResult(
            run_dir=self.run_dir,
            group_ids=tuple(group.id for group in self.space.groups),
            best=chosen or state["best"],
            proxy_best=state["best"],
            finalists=list(state.get("finalists") or []) if chosen else [],
            elapsed_per_iteration=list(state.get("elapsed_per_iteration") or []),
            proposal=state["proposal"],
            uniform=state["uniform"],
            iterations=state["iteration"],
            evaluations=state["evaluations"],
            failed=state["failed"],
            stopped=state["stopped"] or "interrupted",
            best_per_iteration=list(state["best_per_iteration"]),
            base_macs=int(self.space.base_macs),
            base_params=int(self.space.base_params),
            budget=self.budget.as_dict(),
            seconds=state["elapsed"],
            architecture=architecture,
        )

    def _write_report(self, result: SearchResult) -> None:
        try:
            from acp.search.report import search_report

            history = store.History(self.history_path, budget=self.budget_label)
            try:
                rows = history.rows()
            finally:
                history.close()
            latency = self.budget if getattr(self.budget, "max_ms", None) is not None else None
            search_report(self.run_dir / REPORT_FILE, result, rows, self.space.full_widths(), latency)
        except Exception as error:  # a plot must never cost the user the search result
            log.warning("could not write %s: %s", self.run_dir / REPORT_FILE, error)


def _proxy_rank(finalists: list[dict], chosen: dict) -> int:
    """1 + the chosen candidate's position among the finalists (ordered by proxy score)."""
    return 1 + next((i for i, row in enumerate(finalists) if row["widths"] == chosen["widths"]), 0)


def _finalist_fields(row: dict) -> dict:
    return {
        "finalist_score": row.get("score"),
        "finalist_accuracy": row.get("accuracy"),
        "finalist_loss": row.get("loss"),
        "finalist_seconds": row.get("seconds"),
        "finalist_status": row.get("status"),
    }


def _summary(row: dict) -> dict:
    keys = ("score", "accuracy", "loss", "macs", "params", "iteration", "particle", "widths", "status")
    return {key: row.get(key) for key in keys}


def _jsonable(value):
    """Normalize through JSON so a fingerprint compares equal to its stored copy (tuples -> lists)."""
    import json

    return json.loads(json.dumps(value, sort_keys=True))


def _first_difference(stored, current, where: str) -> str:
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            if stored.get(key) != current.get(key):
                return _first_difference(stored.get(key), current.get(key), f"{where}.{key}")
    text = f"{where}: run has {stored!r}, now {current!r}"
    return text if len(text) < 200 else text[:197] + "..."
