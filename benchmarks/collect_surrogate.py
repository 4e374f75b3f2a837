"""Collect real proxy evaluations of the shared ResNet-20 at 30% MACs for the engine benchmark's surrogate.

Candidates: uniformly random keep ratios and the clustering proposal's neighbourhood (Gaussian steps of
0.05 / 0.1 / 0.2 in keep-ratio units), alternating, each repaired onto the budget with Budget.repair and
scored by the run's ProxyEvaluator (one torch thread). Rows are appended to a JSONL file as they come, so
the collection can be stopped and continued; ``--add-history RUN`` appends the evaluations of a finished
search run (its history.sqlite) at the same budget.

    python benchmarks/collect_surrogate.py --run /tmp/acp14/pso30 --count 300
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import numpy as np

RAW = Path(__file__).resolve().parent / "data" / "resnet20_flops30_evaluations.jsonl"
FLOPS = 0.3


def candidates(lower, upper, proposal, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        if index % 2 == 0:
            rows.append(rng.uniform(lower, upper))
        else:
            step = (0.05, 0.1, 0.2)[(index // 2) % 3]
            rows.append(np.clip(proposal + rng.normal(0, step, size=len(lower)), lower, upper))
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, required=True, help="a search run at 30%% MACs (config, proposal)"
    )
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--add-history", action="store_true", help="append the run's history instead")
    parser.add_argument(
        "--widths", type=Path, help="evaluate these widths (a JSON list) instead, source 'check'"
    )
    args = parser.parse_args()
    if args.add_history:
        connection = sqlite3.connect(args.run / "history.sqlite")
        rows = connection.execute("SELECT widths, score FROM evaluations").fetchall()
        with RAW.open("a", encoding="utf-8") as out:
            for widths, score in rows:
                if score is not None:
                    out.write(
                        json.dumps({"widths": json.loads(widths), "score": score, "source": "pso"}) + "\n"
                    )
        print(f"appended {len(rows)} rows of {args.run}")
        return

    from acp.core.budget import Budget
    from acp.proxy.evaluator import ProxyEvaluator, default_proxy_data, fit_to_training_split
    from acp.search.encoding import KeepRatioEncoding
    from acp.settings import load_settings
    from acp.workflows.problem import load_problem
    from acp.workflows.rundir import CONFIG_FILE, read_proposal

    settings = load_settings(args.run / CONFIG_FILE)
    problem = load_problem(settings, require_weights=True)
    data, splits = problem.data()
    proxy_settings = fit_to_training_split(settings.proxy, len(splits.train))
    proxy_data = default_proxy_data(data, splits.train, proxy_settings, seed=settings.data.seed)
    proposal_widths, criterion = read_proposal(args.run, problem.space)
    evaluator = ProxyEvaluator(
        problem.model, problem.space, criterion, proxy_data, proxy_settings, identity=problem.identity
    )
    budget = Budget(problem.space, flops=FLOPS)
    encoding = KeepRatioEncoding(problem.space)
    source, done = "collect", 0
    if args.widths is not None:
        source, widths = "check", np.array(json.loads(args.widths.read_text()), dtype=np.int64)
    else:
        rows = candidates(
            encoding.lower, encoding.upper, encoding.encode(proposal_widths), args.count, args.seed
        )
        if RAW.exists():
            done = sum(1 for line in RAW.read_text().splitlines() if '"source": "collect"' in line)
        widths = budget.repair(rows)
    with RAW.open("a", encoding="utf-8") as out:
        for index in range(done, len(widths)):
            began = time.perf_counter()
            result = evaluator.evaluate(widths[index].tolist())
            if np.isfinite(result.score):
                record = {"widths": widths[index].tolist(), "score": result.score, "source": source}
                out.write(json.dumps(record) + "\n")
                out.flush()
            print(f"{index} {result.score} {time.perf_counter() - began:.1f}s", flush=True)


if __name__ == "__main__":
    main()
