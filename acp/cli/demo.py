"""``acp demo``: the whole pipeline on a built-in example (acp.workflows.demo)."""

from __future__ import annotations

import argparse

DEMO_BLURB = "ResNet-8 on scikit-learn digits, pruned to 50% of the MACs"


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the whole pipeline on a built-in example (a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="new output directory (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="smallest sizes (a smoke test, ~1 minute)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_table
    from acp.train.finetune import summary_rows
    from acp.workflows.demo import run_demo

    result = run_demo(args.out, quick=args.quick, progress=not args.quiet)
    print(f"acp demo finished in {result.seconds:.0f} s: {DEMO_BLURB}")
    print_table(summary_rows(result.metrics))
    out = result.out_dir
    print(
        f"files: {out / 'search' / 'best_arch.json'} (architecture), {out / 'pruned'} (pruned model: "
        f"acp.load_pruned({str(out / 'pruned')!r})), {out / 'search' / 'report.png'} (search report), "
        f"{out / 'demo_config.toml'} (its configuration, to edit and rerun with acp run), "
        f"{out / 'digit.png'} (a validation image to try the pruned model on)"
    )
    return 0
