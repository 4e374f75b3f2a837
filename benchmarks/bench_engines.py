"""Search engines on landscapes with a known answer: acp's PSO vs random search, CMA-ES, DE, NGOpt, TPE.

Every engine works on the same coordinates (``KeepRatioEncoding`` bounds of the ResNet-20 channel space),
every candidate goes through the same budget repair (``Budget.repair``) and every engine gets the same
number of evaluations, asked and told in rounds of 12 (the swarm's size: the parallel setting a search
runs in). The first round of every engine holds the same two seeds: the "proposal" (the swarm's
particle 0) and the uniform-ratio vector (particle 1).

- ``pso``: ``acp.search.pso.ParticleSwarm`` driven through ask/tell exactly as ``acp.search.study`` does
  (repaired positions told back, Lamarckian); ``--pso key=value`` overrides a SearchSettings field;
- ``random``: uniformly random keep ratios in the bounds;
- ``cma``: pycma's CMA-ES (x0 = the proposal, sigma0 = 0.25, bound-constrained, popsize 12), told the
  repaired vectors (pycma accepts modified solutions);
- ``de`` / ``ngopt``: nevergrad's ``TwoPointsDE`` and ``NGOpt`` (budget and num_workers=12 given);
- ``tpe``: optuna's multivariate TPE sampler (constant liar for the rounds of 12).
  nevergrad and optuna bind a value to the vector they asked for, so they are told the score of its
  repair at the asked vector (the repair is a fixed map: same objective, Darwinian).

Landscapes (``acp.search.synthetic``): ``smooth`` (SyntheticEvaluator's, 50% MACs), ``multimodal``
(five peaks on the 50% MACs budget, the global one narrow), ``noisy`` (multimodal + deterministic noise
of the proxy's size), ``surrogate`` (a Gaussian process fitted to real proxy evaluations of the shared
ResNet-20 at 30% MACs, benchmarks/data/resnet20_flops30_proxy.json). Regret = reference optimum - the
noise-free value of the candidate with the best *observed* score so far.

    python benchmarks/bench_engines.py                    # the full table, plot and RESULTS.md section
    python benchmarks/bench_engines.py --quick --no-write # smoke test
    python benchmarks/bench_engines.py --fit-surrogate    # refit the surrogate from the raw evaluations
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SURROGATE = DATA / "resnet20_flops30_proxy.json"
RAW = DATA / "resnet20_flops30_evaluations.jsonl"
PLOT = HERE / "engines.png"
SECTION = "Search engines (bench_engines.py)"
ENGINES = ("pso", "random", "cma", "de", "ngopt", "tpe")
LANDSCAPES = ("smooth", "multimodal", "noisy", "surrogate")
ROUND = 12
REFERENCE_RUNS = (3, 4000)  # long CMA-ES runs (restarts, evaluations each) behind an unknown optimum

sys.path.insert(0, str(HERE))
from bench_common import provenance_lines, update_section  # noqa: E402

# --- problems ----------------------------------------------------------------------------------------


class Problem:
    """One landscape instance: space, budget, encoding, the seeds every engine starts from."""

    def __init__(self, name: str, space, seed: int):
        from acp.core.budget import Budget
        from acp.search.encoding import KeepRatioEncoding
        from acp.search.synthetic import landscape

        self.name, self.space, self.seed = name, space, seed
        self.encoding = KeepRatioEncoding(space)
        rng = np.random.default_rng([seed, 31337])
        if name == "surrogate":
            document = json.loads(SURROGATE.read_text(encoding="utf-8"))
            self.budget = Budget(space, flops=document["flops"])
            self.landscape = landscape(name, space, surrogate=SURROGATE)
            self.proposal = np.asarray(document["proposal"], dtype=np.int64)
        else:
            self.budget = Budget(space, flops=0.5)
            self.landscape = landscape(name, space, budget=self.budget, seed=seed)
            if name == "smooth":  # a plausible guess: the preferred profile, blurred
                guess = self.landscape.profile + rng.normal(0, 0.15, self.encoding.dimensions)
            else:  # a generic start: blurred uniform ratios, near no peak in particular
                guess = 0.5 + rng.normal(0, 0.1, self.encoding.dimensions)
            self.proposal = self.budget.repair(np.clip(guess, self.encoding.lower, 1.0))
        self.uniform = self.budget.repair(self.encoding.upper)
        self.reference = self.landscape.optimum  # None: from long runs (reference())

    def observe(self, widths: np.ndarray) -> np.ndarray:
        if not self.landscape.noise:
            return self.landscape.values(widths)
        return np.array([self.landscape.observe(row) for row in widths])

    def truth(self, widths: np.ndarray) -> np.ndarray:
        return self.landscape.values(widths)


def resnet20_space():
    from acp.core.architecture import ModelIdentity
    from acp.prune import build_space

    return build_space(ModelIdentity("resnet20_cifar", 10, (3, 32, 32), {}), {"min_keep": 0.1})[1]


# --- engines ------------------------------------------------------------------------------------------
# each: (problem, evaluations, seed) -> the repaired widths it evaluated, in order (evaluations, G)


def run_pso(problem: Problem, evaluations: int, seed: int, overrides: dict | None = None) -> np.ndarray:
    from acp.search.pso import ParticleSwarm
    from acp.settings import SearchSettings

    settings = SearchSettings(seed=seed, particles=ROUND, **(overrides or {}))
    lower, upper = problem.encoding.bounds
    swarm = ParticleSwarm(settings, lower, upper, proposal=problem.encoding.encode(problem.proposal))
    done = []
    while sum(len(block) for block in done) < evaluations:
        widths = problem.budget.repair(swarm.ask())
        scores = problem.observe(widths)
        swarm.tell(problem.encoding.encode(widths), -scores)
        done.append(widths)
    return np.concatenate(done)[:evaluations]


def run_random(problem: Problem, evaluations: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ratios = rng.uniform(
        problem.encoding.lower, problem.encoding.upper, (evaluations, problem.encoding.dimensions)
    )
    widths = problem.budget.repair(ratios)
    widths[0], widths[1] = problem.proposal, problem.uniform
    return widths


def run_cma(problem: Problem, evaluations: int, seed: int, *, popsize: int = ROUND) -> np.ndarray:
    import cma

    lower, upper = problem.encoding.bounds
    options = {
        "bounds": [lower.tolist(), upper.tolist()],
        "popsize": popsize,
        "seed": seed + 1,  # pycma: seed 0 means "from the clock"
        "verbose": -9,
        "maxfevals": math.inf,
        "tolfun": 0,
        "tolx": 0,
        "tolflatfitness": 10**9,
        "tolstagnation": 10**9,
    }
    es = cma.CMAEvolutionStrategy(problem.encoding.encode(problem.proposal).tolist(), 0.25, options)
    es.inject([problem.encoding.encode(problem.uniform)], force=True)
    done, count = [], 0
    while count < evaluations:
        asked = np.array(es.ask())
        if count == 0:
            asked[0] = problem.encoding.encode(problem.proposal)
        widths = problem.budget.repair(asked)
        scores = problem.observe(widths)
        es.tell(list(problem.encoding.encode(widths)), list(-scores))
        done.append(widths)
        count += len(widths)
    return np.concatenate(done)[:evaluations]


def _nevergrad_metamodel_fix() -> None:
    """nevergrad 1.0.12's metamodel (NGOpt, MetaModel*) calls ``float(model.predict(one_row))``, which
    numpy >= 2.4 refuses for a 1-element array. Its quadratic model is sklearn's LinearRegression,
    imported at call time: a subclass returning a scalar for one row makes the step work as designed."""
    import sklearn.linear_model

    base = sklearn.linear_model.LinearRegression
    if getattr(base, "_one_row_scalar", False):
        return

    class LinearRegression(base):
        _one_row_scalar = True

        def predict(self, X):
            predicted = super().predict(X)
            return predicted[0] if predicted.shape == (1,) else predicted

    sklearn.linear_model.LinearRegression = LinearRegression


def run_nevergrad(problem: Problem, evaluations: int, seed: int, name: str) -> np.ndarray:
    import nevergrad as ng

    _nevergrad_metamodel_fix()

    lower, upper = problem.encoding.bounds
    parametrization = ng.p.Array(init=problem.encoding.encode(problem.proposal)).set_bounds(lower, upper)
    parametrization.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.registry[name](parametrization, budget=evaluations, num_workers=ROUND)
    optimizer.suggest(problem.encoding.encode(problem.proposal))
    optimizer.suggest(problem.encoding.encode(problem.uniform))
    done, count = [], 0
    while count < evaluations:
        asked = [optimizer.ask() for _ in range(min(ROUND, evaluations - count))]
        widths = problem.budget.repair(np.array([candidate.value for candidate in asked]))
        for candidate, score in zip(asked, problem.observe(widths)):
            optimizer.tell(candidate, -float(score))
        done.append(widths)
        count += len(widths)
    return np.concatenate(done)


def run_tpe(problem: Problem, evaluations: int, seed: int) -> np.ndarray:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lower, upper = problem.encoding.bounds
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    names = [f"g{i}" for i in range(problem.encoding.dimensions)]
    for seed_widths in (problem.proposal, problem.uniform):
        study.enqueue_trial(dict(zip(names, problem.encoding.encode(seed_widths).tolist())))
    done, count = [], 0
    while count < evaluations:
        trials = [study.ask() for _ in range(min(ROUND, evaluations - count))]
        asked = np.array(
            [
                [trial.suggest_float(n, low, high) for n, low, high in zip(names, lower, upper)]
                for trial in trials
            ]
        )
        widths = problem.budget.repair(asked)
        for trial, score in zip(trials, problem.observe(widths)):
            study.tell(trial, float(score))
        done.append(widths)
        count += len(widths)
    return np.concatenate(done)


def run_engine(engine: str, problem: Problem, evaluations: int, seed: int, overrides=None) -> np.ndarray:
    if engine == "pso":
        return run_pso(problem, evaluations, seed, overrides)
    if engine == "random":
        return run_random(problem, evaluations, seed)
    if engine == "cma":
        return run_cma(problem, evaluations, seed)
    if engine == "de":
        return run_nevergrad(problem, evaluations, seed, "TwoPointsDE")
    if engine == "ngopt":
        return run_nevergrad(problem, evaluations, seed, "NGOpt")
    if engine == "tpe":
        return run_tpe(problem, evaluations, seed)
    raise ValueError(f"unknown engine {engine!r}")


def regret_curve(problem: Problem, widths: np.ndarray, reference: float) -> np.ndarray:
    """reference - truth(the best observed candidate so far), after each evaluation."""
    observed, truth = problem.observe(widths), problem.truth(widths)
    best_index = np.zeros(len(widths), dtype=np.int64)
    for index in range(1, len(widths)):
        previous = best_index[index - 1]
        best_index[index] = index if observed[index] > observed[previous] else previous
    return reference - truth[best_index]


def reference_value(problem: Problem) -> tuple[float, str]:
    """The known optimum, or the best of long CMA-ES runs (restarts x evaluations)."""
    if problem.reference is not None:
        return problem.reference, "analytic"
    restarts, count = REFERENCE_RUNS
    best = -math.inf
    for restart in range(restarts):
        widths = run_cma(problem, count, 1000 + restart)
        best = max(best, float(problem.truth(widths).max()))
    return best, f"best of {restarts} CMA-ES runs x {count} evaluations"


# --- the surrogate ------------------------------------------------------------------------------------


def fit_surrogate(space, proposal_path: Path) -> dict:
    """Fit a GP (ARD RBF + white noise, marginal likelihood) to the raw evaluations; held-out quality
    from a seeded 80/20 split refit on the 80%."""
    from scipy.stats import spearmanr
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    rows = [json.loads(line) for line in RAW.read_text(encoding="utf-8").splitlines() if line.strip()]
    unique = {}
    for row in rows:
        unique.setdefault(tuple(row["widths"]), (row["score"], row["source"]))
    widths = np.array(list(unique), dtype=np.int64)
    scores = np.array([value[0] for value in unique.values()])
    sources = [value[1] for value in unique.values()]
    full = np.asarray(space.full_widths(), dtype=np.float64)
    ratios = widths / full

    def fitted(x, y):
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(np.ones(x.shape[1]), (1e-2, 1e2)) + WhiteKernel(
            0.1, (1e-5, 1.0)
        )
        mean, scale = float(y.mean()), float(y.std())
        gp = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=2, random_state=0)
        gp.fit(x, (y - mean) / scale)
        return gp, mean, scale

    rng = np.random.default_rng(0)
    order = rng.permutation(len(scores))
    held, train = order[: len(order) // 5], order[len(order) // 5 :]
    gp, mean, scale = fitted(ratios[train], scores[train])
    predicted = mean + scale * gp.predict(ratios[held])
    residual = scores[held] - predicted
    r2 = 1 - float(np.sum(residual**2) / np.sum((scores[held] - scores[held].mean()) ** 2))
    spearman = float(spearmanr(predicted, scores[held]).statistic)
    gp, mean, scale = fitted(ratios, scores)
    params = gp.kernel_.get_params()
    proposal = json.loads(proposal_path.read_text(encoding="utf-8"))["widths"]
    random_scores = np.array([s for s, source in zip(scores, sources) if source == "collect"])
    return {
        "description": "GP posterior mean (ARD RBF + white noise, sklearn marginal likelihood) over keep "
        "ratios, fitted to real proxy evaluations of the shared ResNet-20 at 30% MACs",
        "flops": 0.3,
        "group_ids": [group.id for group in space.groups],
        "full_widths": [int(w) for w in full],
        "proposal": [int(w) for w in proposal],
        "points": widths.tolist(),
        "scores": scores.tolist(),
        "sources": sources,
        "kernel": {
            "amplitude": float(params["k1__k1__constant_value"]),
            "length_scales": np.atleast_1d(params["k1__k2__length_scale"]).tolist(),
            "noise": float(params["k2__noise_level"]),
            "y_mean": mean,
            "y_scale": scale,
        },
        "fit": {
            "points": len(scores),
            "held_out": len(held),
            "held_out_r2": r2,
            "held_out_spearman": spearman,
            "held_out_rmse": float(np.sqrt(np.mean(residual**2))),
            "score_range_p5_p95": [
                float(np.percentile(random_scores, 5)),
                float(np.percentile(random_scores, 95)),
            ]
            if len(random_scores)
            else None,
        },
    }


# --- the benchmark ------------------------------------------------------------------------------------


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value) if value not in ("", None) else None
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--landscapes", nargs="+", default=list(LANDSCAPES), choices=LANDSCAPES)
    parser.add_argument("--counts", nargs="+", type=int, default=[48, 360, 1000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pso", nargs="*", default=[], help="SearchSettings overrides, key=json-value")
    parser.add_argument("--quick", action="store_true", help="tiny counts and 2 seeds (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print only (no RESULTS.md, no plot)")
    parser.add_argument("--fit-surrogate", action="store_true")
    parser.add_argument("--proposal", type=Path, default=Path("/tmp/acp14/pso30/proposal.json"))
    args = parser.parse_args()
    import warnings

    # pycma's injection notes and nevergrad's bound/sigma hints, once per run, would bury the table
    warnings.filterwarnings("ignore", module=r"(cma|nevergrad)\b.*")
    space = resnet20_space()
    if args.fit_surrogate:
        from acp.fileio import atomic_write_text

        document = fit_surrogate(space, args.proposal)
        atomic_write_text(SURROGATE, json.dumps(document) + "\n")
        print(json.dumps(document["fit"]), json.dumps(document["kernel"]))
        return
    if args.quick:
        args.counts, args.seeds = [24], 2
        global REFERENCE_RUNS
        REFERENCE_RUNS = (1, 240)
    overrides = parse_overrides(args.pso)
    began = time.perf_counter()
    results = {}  # (landscape, count, engine) -> per-seed regret curves
    references = {}
    for name in args.landscapes:
        instances = []  # the surrogate is one instance for every seed; the others are drawn per seed
        for seed in range(args.seeds):
            problem = Problem(name, space, 0 if name == "surrogate" else seed)
            runs = {
                (count, engine): run_engine(engine, problem, count, seed, overrides)
                for count in args.counts
                for engine in args.engines
            }
            instances.append((problem, runs))
        shared = reference_value(instances[0][0]) if name == "surrogate" else None
        for problem, runs in instances:
            reference, how = shared or reference_value(problem)
            best_seen = (
                max(float(problem.truth(widths).max()) for other in instances for widths in other[1].values())
                if name == "surrogate"
                else max(float(problem.truth(widths).max()) for widths in runs.values())
            )
            if best_seen > reference:  # never a negative regret: the reference is the best ever seen
                reference, how = best_seen, f"{how}, raised to the best any engine found"
            references.setdefault(name, []).append((reference, how))
            for (count, engine), widths in runs.items():
                results.setdefault((name, count, engine), []).append(regret_curve(problem, widths, reference))
        print(f"{name}: references {[round(r, 5) for r, _ in references[name]]}", flush=True)
    seconds = time.perf_counter() - began
    lines = table(results, args)
    print("\n".join(lines))
    print(f"{seconds:.0f} s")
    if args.no_write:
        return
    plot(results, args)
    write_section(results, references, args, seconds)


def summary(curves: list[np.ndarray]) -> tuple[float, float]:
    finals = np.array([curve[-1] for curve in curves])
    return float(finals.mean()), float(finals.std())


def table(results: dict, args) -> list[str]:
    lines = [
        "| landscape | evaluations | " + " | ".join(args.engines) + " |",
        "|---|---|" + "---|" * len(args.engines),
    ]
    for name in args.landscapes:
        for count in args.counts:
            cells = []
            for engine in args.engines:
                mean, std = summary(results[name, count, engine])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    return lines


def wins(results: dict, args) -> list[str]:
    """PSO vs random per seed, and PSO vs the best other engine (mean, and whether within one std)."""
    lines = []
    for name in args.landscapes:
        for count in args.counts:
            pso = np.array([curve[-1] for curve in results[name, count, "pso"]])
            parts = [f"{name} @ {count}:"]
            if "random" in args.engines:
                rand = np.array([curve[-1] for curve in results[name, count, "random"]])
                parts.append(f"PSO better than random in {int(np.sum(pso < rand))}/{len(pso)} seeds")
                parts.append(f"(mean {pso.mean():.4f} vs {rand.mean():.4f})")
            others = [e for e in args.engines if e not in ("pso", "random")]
            if others:
                best = min(others, key=lambda e: summary(results[name, count, e])[0])
                mean, std = summary(results[name, count, best])
                parts.append(f"; best other {best} {mean:.4f} ± {std:.4f}")
            lines.append(" ".join(parts))
    return lines


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(args.counts)
    figure, axes = plt.subplots(1, len(args.landscapes), figsize=(4.2 * len(args.landscapes), 3.6))
    for axis, name in zip(np.atleast_1d(axes), args.landscapes):
        for engine in args.engines:
            curves = np.array(results[name, count, engine])
            mean = curves.mean(axis=0)
            x = np.arange(1, len(mean) + 1)
            axis.plot(x, mean, label=engine, linewidth=2.2 if engine == "pso" else 1.2)
            axis.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.12)
        axis.set_xscale("log")
        axis.set_yscale("symlog", linthresh=1e-3)
        axis.set_title(name)
        axis.set_xlabel("evaluations")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"regret (mean, band = min..max over {args.seeds} seeds)")
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def write_section(results: dict, references: dict, args, seconds: float) -> None:
    import cma
    import nevergrad
    import optuna

    document = json.loads(SURROGATE.read_text(encoding="utf-8"))
    fit = document["fit"]
    versions = {"numpy": np.__version__, "nevergrad": nevergrad.__version__, "optuna": optuna.__version__}
    versions["cma"] = cma.__version__
    lines = provenance_lines("bench_engines.py", f"wall time {seconds:.0f} s", versions)
    lines += [
        "",
        "Regret = reference optimum - noise-free value of the candidate with the best observed score, "
        f"mean ± std over {args.seeds} seeds (engine seed; the smooth/multimodal/noisy instance is drawn "
        "from the same seed). Every engine: ResNet-20 keep-ratio bounds, Budget.repair on every candidate, "
        "rounds of 12, the proposal and the uniform vector in its first round. References: "
        + "; ".join(
            f"{name} {', '.join(f'{value:.5f}' for value, _ in entries)} ({entries[0][1]})"
            for name, entries in references.items()
        )
        + ".",
        "",
        *table(results, args),
        "",
        *[f"- {line}" for line in wins(results, args)],
        "",
        f"![regret vs evaluations]({PLOT.name})",
        "",
        f"Surrogate: {fit['points']} distinct real proxy evaluations at 30% MACs "
        f"(benchmarks/data/{RAW.name}); GP fit held-out ({fit['held_out']} points, seeded 80/20 split): "
        f"R² {fit['held_out_r2']:.3f}, Spearman {fit['held_out_spearman']:.3f}, "
        f"RMSE {fit['held_out_rmse']:.4f}.",
    ]
    update_section(SECTION, lines)


if __name__ == "__main__":
    main()
