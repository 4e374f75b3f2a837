"""What several budgets in one run cost, and whether warm-starting from the neighbouring budget helps.

On the shared ResNet-20 (search_spaces/resnet20_cifar10.toml, CIFAR-10 shared split), four MACs budgets:

1. **Cost.** Four separate single-budget runs (``acp search --flops B``), then one four-budget run
   (``acp search --flops 0.7,0.5,0.3,0.2``), each in its own process pinned to one core. A run's set-up
   is the time from its start to its first checkpoint (model, data, proxy slices, feature statistics,
   clustering, rankings, evaluator: everything before the first evaluation); its search is the rest. The
   issue's bound: the four-budget run costs at most 1.3x (one set-up + the four searches). Also shown: the
   four-budget run against the four separate runs, and whether its winners equal theirs (they must).
2. **Warm start.** The four-budget run with ``[search] warm_start = true`` against the same run without,
   over seeds: each budget's best proxy score and re-ranked finalist score at the same evaluations. This
   is a search-quality comparison on the proxy (training-split images only), not a finetuned one.

Resumable: every run directory under ``--out`` that finished is reused. Writes the "Several budgets in
one run" section of RESULTS.md.

    python benchmarks/bench_multi_budget.py [--particles 12] [--iterations 10] [--seeds 0,1]
        [--out /tmp/acp18/multi] [--cpu 0] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "resnet20_cifar10.toml"
SECTION = "Several budgets in one run (bench_multi_budget.py)"
BUDGETS = (0.7, 0.5, 0.3, 0.2)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import update_section  # noqa: E402  (benchmarks/ is the script's directory)


def write_config(path: Path, *, warm_start: bool) -> Path:
    """The ResNet-20 config (paths resolved), with warm_start set."""
    from acp.settings import load_settings

    settings = load_settings(CONFIG)
    settings = settings.replace(search=settings.search.replace(warm_start=warm_start))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.to_toml(), encoding="utf-8")
    return path


def timed_run(config: Path, out: Path, flops: str, args, seed: int) -> dict:
    """One ``acp search`` process (pinned): wall seconds, set-up seconds (until the first checkpoint)."""
    record = out / "bench_timing.json"
    if record.is_file():
        return json.loads(record.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)  # an unfinished run is timed again from the start
    several = "," in flops  # the first budget's folder gets the first checkpoint
    first = (out / f"flops{flops.split(',')[0]}" if several else out) / "checkpoint.json"
    command = [
        "taskset",
        "-c",
        str(args.cpu),
        sys.executable,
        "-m",
        "acp",
        "search",
        str(config),
        "--out",
        str(out),
        "--flops",
        flops,
        "--particles",
        str(args.particles),
        "--iterations",
        str(args.iterations),
        "--seed",
        str(seed),
        "--quiet",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    began = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    setup = None
    while process.poll() is None:
        if setup is None and first.is_file():
            setup = time.perf_counter() - began
        time.sleep(0.05)
    wall = time.perf_counter() - began
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    timing = {"wall": wall, "setup": setup if setup is not None else wall, "stdout": stdout.splitlines()[-3:]}
    record.write_text(json.dumps(timing, indent=1))
    return timing


def winners(run_dir: Path, labels) -> dict:
    """{label: (widths, proxy score, finalist score, MACs ratio, params ratio)} of a run's best_arch files."""
    from acp.core.architecture import Architecture

    found = {}
    for label in labels:
        path = run_dir / label / "best_arch.json" if label else run_dir / "best_arch.json"
        arch = Architecture.load(path)
        found[label] = (
            [group.width for group in arch.groups],
            arch.provenance.get("proxy_score"),
            arch.provenance.get("finalist_score"),
            arch.macs_ratio,
            arch.params_ratio,
        )
    return found


def best_proxy_scores(run_dir: Path) -> dict:
    """{label: best proxy score over the budget's history rows}."""
    from acp.search import store

    history = store.History(run_dir / store.HISTORY_FILE)
    try:
        best: dict = {}
        for row in history.rows():
            if row["score"] is not None:
                best[row["budget"]] = max(best.get(row["budget"], -np.inf), row["score"])
        return best
    finally:
        history.close()


def _score(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp18/multi"))
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    labels = [f"flops{budget:g}" for budget in BUDGETS]
    listed = ",".join(f"{budget:g}" for budget in BUDGETS)
    plain = write_config(args.out / "configs" / "plain.toml", warm_start=False)
    warm = write_config(args.out / "configs" / "warm.toml", warm_start=True)
    started = time.perf_counter()

    # a first, untimed run: the page cache holds the images, the libraries and the weights afterwards
    timed_run(plain, args.out / "warmup", f"{BUDGETS[0]:g}", args, seeds[0])
    # 1. cost: the four single-budget runs and the four-budget run, seed 0, alternating the order
    singles = {}
    multi = None
    for index, budget in enumerate(BUDGETS):
        singles[budget] = timed_run(
            plain, args.out / f"single_{budget:g}_s{seeds[0]}", f"{budget:g}", args, seeds[0]
        )
        print(f"single {budget:g}: {singles[budget]['wall']:.0f} s (set-up {singles[budget]['setup']:.0f} s)")
        if index == 1:  # the four-budget run between the singles: drift in the machine's speed hits both
            multi = timed_run(plain, args.out / f"multi_s{seeds[0]}", listed, args, seeds[0])
            print(f"four budgets: {multi['wall']:.0f} s (set-up {multi['setup']:.0f} s)")
    setups = [timing["setup"] for timing in singles.values()]
    searches = [timing["wall"] - timing["setup"] for timing in singles.values()]
    reference = float(np.mean(setups)) + float(np.sum(searches))
    separate = float(np.sum([timing["wall"] for timing in singles.values()]))
    ratio = multi["wall"] / reference
    multi_winners = winners(args.out / f"multi_s{seeds[0]}", labels)
    same = all(
        multi_winners[label][0] == winners(args.out / f"single_{budget:g}_s{seeds[0]}", [None])[None][0]
        for label, budget in zip(labels, BUDGETS)
    )

    # 2. warm start against none, every seed
    quality = []
    for seed in seeds:
        for name, config in (("off", plain), ("warm", warm)):
            run = args.out / f"{'multi' if name == 'off' else 'warm'}_s{seed}"
            timing = timed_run(config, run, listed, args, seed)
            print(f"seed {seed} warm start {name}: {timing['wall']:.0f} s")
            found, proxy = winners(run, labels), best_proxy_scores(run)
            quality.append((seed, name, found, proxy))
    minutes = (time.perf_counter() - started) / 60

    evaluations = args.particles * args.iterations
    lines = [
        f"Date: {date.today().isoformat()}. Command: `python benchmarks/bench_multi_budget.py --particles "
        f"{args.particles} --iterations {args.iterations} --seeds {args.seeds} --cpu {args.cpu}` "
        f"({minutes:.0f} min here; runs reused from earlier invocations count their original time).",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), each run one process pinned to CPU "
        f"{args.cpu}, one torch thread; the machine is shared: each time is one measurement.",
        f"Model: the shared ResNet-20 (search_spaces/resnet20_cifar10.toml), MACs budgets {listed}; "
        f"{args.particles} particles x {args.iterations} iterations = {evaluations} evaluations per budget, "
        "then the default re-ranking of 5 finalists; default proxy (training-split images only).",
        "",
        "**Cost.** Set-up = start of the process to its first checkpoint (model, data, proxy slices, feature "
        "statistics, clustering, rankings, evaluator); search = the rest (searches, re-ranking, reports).",
        "",
        "| run | wall (s) | set-up (s) | search (s) |",
        "|---|---|---|---|",
    ]
    for budget, timing in singles.items():
        lines.append(
            f"| single-budget, flops {budget:g} | {timing['wall']:.0f} | {timing['setup']:.0f} | "
            f"{timing['wall'] - timing['setup']:.0f} |"
        )
    lines += [
        f"| **four budgets in one run** | **{multi['wall']:.0f}** | {multi['setup']:.0f} | "
        f"{multi['wall'] - multi['setup']:.0f} |",
        "",
        f"- One set-up + the four searches: {reference:.0f} s. The four-budget run: {multi['wall']:.0f} s = "
        f"**{ratio:.2f}x** (bound: at most 1.3x): **{'met' if ratio <= 1.3 else 'not met'}**.",
        f"- Against four separate runs ({separate:.0f} s): {multi['wall'] / separate:.2f}x, "
        f"{separate - multi['wall']:.0f} s saved (the set-up is done once instead of four times).",
        f"- Its four winners equal the four single-budget runs' (same seed, warm start off): "
        f"**{'yes' if same else 'NO'}**.",
        "",
        "**Warm start** (`[search] warm_start = true`: each budget's particle 2 starts from the previous "
        "budget's winner, repaired onto its own budget; the first budget is unaffected). Best proxy score "
        "over the budget's evaluations / the re-ranked winner's finalist score (higher is better: negative "
        "proxy loss), per seed:",
        "",
        "| seed | warm start | " + " | ".join(labels[1:]) + " |",
        "|---|---|" + "---|" * (len(labels) - 1),
    ]
    for seed, name, found, proxy in quality:
        cells = [f"{proxy[label]:.4f} / {_score(found[label][2])}" for label in labels[1:]]
        lines.append(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    gains = []
    for label in labels[1:]:
        for seed in seeds:
            by_name = {name: (proxy, found) for s, name, found, proxy in quality if s == seed}
            gains.append(by_name["warm"][0][label] - by_name["off"][0][label])
    wins = sum(gain > 0 for gain in gains)
    lines += [
        "",
        f"- Best proxy score, warm minus off, over {len(gains)} (budget, seed) pairs: mean "
        f"{np.mean(gains):+.4f}, better in {wins}, worse in {sum(gain < 0 for gain in gains)}, equal in "
        f"{sum(gain == 0 for gain in gains)}.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        update_section(SECTION, lines)


if __name__ == "__main__":
    main()
