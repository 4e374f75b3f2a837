"""How long does the ``acp`` command take before it does anything, and does it import torch to get there?

    python benchmarks/bench_startup.py [--repeats 10] [--json FILE] [--before FILE] [--no-write] [--quick]

Times (wall clock, a fresh process each run) ``acp --help``, ``acp --version``, ``acp search --help``,
a rejected flag (``acp search --flopz 0.5``) and ``python -c "import acp"``, and reports the median and
the minimum of ``--repeats`` runs, and whether the process imported torch (read from ``python -X
importtime``). ``--json FILE`` saves the figures; ``--before FILE`` adds a column with figures saved
earlier (e.g. on an older commit) so the section shows before and after. Replaces this script's
section of benchmarks/RESULTS.md unless ``--no-write``; ``--quick`` is one repeat, for the smoke test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SECTION = "CLI start-up (bench_startup.py)"
ROOT = Path(__file__).resolve().parents[1]


def cases() -> dict[str, tuple[list[str], int]]:
    """Label -> (argv of a fresh process, the exit code it must end with). The console script is run by
    this interpreter so ``-X importtime`` can be put in front of it."""
    acp = shutil.which("acp") or str(Path(sys.executable).with_name("acp"))
    return {
        "acp --help": ([acp, "--help"], 0),
        "acp --version": ([acp, "--version"], 0),
        "acp search --help": ([acp, "search", "--help"], 0),
        "acp search --flopz 0.5 (rejected flag)": ([acp, "search", "--flopz", "0.5"], 2),
        'python -c "import acp"': (["-c", "import acp"], 0),
    }


def wall_seconds(argv: list[str], repeats: int, expected_exit: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT)
        samples.append(time.perf_counter() - start)
        if done.returncode != expected_exit:  # timing a crash would say nothing
            raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, not {expected_exit}\n{done.stderr}")
    return samples


def imports_torch(argv: list[str]) -> bool:
    command = [sys.executable, "-X", "importtime", *argv]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def measure(repeats: int) -> dict[str, dict]:
    figures = {}
    for label, (argv, expected_exit) in cases().items():
        samples = wall_seconds(argv, repeats, expected_exit)
        figures[label] = {
            "median_s": statistics.median(samples),
            "min_s": min(samples),
            "repeats": repeats,
            "imports_torch": imports_torch(argv),
        }
        print(f"{label}: median {figures[label]['median_s']:.2f} s, min {figures[label]['min_s']:.2f} s")
    return figures


def table(figures: dict[str, dict], before: dict | None) -> list[str]:
    def cell(row: dict) -> str:
        torch = "yes" if row["imports_torch"] else "no"
        return f"{row['median_s']:.2f} | {row['min_s']:.2f} | {torch}"

    if before:
        lines = [
            "| command | before: median s | min s | imports torch | now: median s | min s | imports torch |",
            "|---|---:|---:|---|---:|---:|---|",
        ]
        rows = before.get("figures", {})
        for label, row in figures.items():
            old = cell(rows[label]) if label in rows else "- | - | -"
            lines.append(f"| `{label}` | {old} | {cell(row)} |")
        return lines
    lines = ["| command | median s | min s | imports torch |", "|---|---:|---:|---|"]
    lines.extend(f"| `{label}` | {cell(row)} |" for label, row in figures.items())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--before", type=Path, help="figures saved earlier with --json, shown alongside")
    parser.add_argument("--note", default="", help="a word on the machine's load, put in the section")
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="one repeat (smoke test)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    figures = measure(repeats)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "figures": figures}, indent=2) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    lines = table(figures, before)
    print("\n".join(lines))
    if args.no_write:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import provenance_lines, update_section

    body = [
        *provenance_lines("bench_startup.py", args.note),
        "",
        f'Wall time of a fresh process, {repeats} runs each (median and minimum); "imports torch" is read '
        "from `python -X importtime`.",
    ]
    if before:
        note = f": {before['note']}" if before.get("note") else ""
        body.append(
            f'"before" was measured at {before.get("commit", "?")} with the same script (`--json`){note}; '
            f'"now" at {commit} (+ working tree).'
        )
    update_section(SECTION, [*body, "", *lines])


if __name__ == "__main__":
    main()
