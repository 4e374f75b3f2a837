"""``acp demo``: the whole pipeline on a built-in example (acp.workflows.demo)."""

from __future__ import annotations

import argparse

from acp.workflows.demo import DEFAULT_OUT, DEMO_TASKS

DEMO_BLURB = "ResNet-8 on scikit-learn digits, pruned to 50% of the MACs"
DETECTION_BLURB = "SSDlite (MobileNetV3 at 0.25 width) on generated shapes, pruned to 50% of the MACs"


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the whole pipeline on a built-in example (a few minutes)")
    demo.add_argument(
        "--task",
        choices=DEMO_TASKS,
        default="classification",
        help="classification (default: ResNet-8 on digits) or detection (SSDlite on generated shapes)",
    )
    demo.add_argument(
        "--out",
        help=f"new output directory (default: {DEFAULT_OUT['classification']}; "
        f"{DEFAULT_OUT['detection']} for --task detection)",
    )
    demo.add_argument("--quick", action="store_true", help="smallest sizes (a smoke test, ~1 minute)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.workflows.demo import run_demo

    result = run_demo(args.out, task=args.task, quick=args.quick, progress=not args.quiet)
    if args.task == "detection":
        _print_detection(result)
    else:
        _print_classification(result)
    return 0


def _print_classification(result) -> None:
    from acp.cli.common import print_table
    from acp.train.finetune import summary_rows

    print(f"acp demo finished in {result.seconds:.0f} s: {DEMO_BLURB}")
    print_table(summary_rows(result.metrics))
    out = result.out_dir
    print(
        f"files: {out / 'search' / 'best_arch.json'} (architecture), {out / 'pruned'} (pruned model: "
        f"acp.load_pruned({str(out / 'pruned')!r})), {out / 'search' / 'report.png'} (search report), "
        f"{out / 'demo_config.toml'} (its configuration, to edit and rerun with acp run), "
        f"{out / 'digit.png'} (a validation image to try the pruned model on)"
    )


def _print_detection(result) -> None:
    from acp.cli.common import print_table
    from acp.train.finetune import summary_rows
    from acp.workflows.demo import DETECTION_SAMPLE_IMAGE

    print(f"acp demo --task detection finished in {result.seconds:.0f} s: {DETECTION_BLURB}")
    rows = summary_rows(result.metrics)
    strict = ("val mAP@[.5:.95]", f"{100 * result.base_map:.2f}", f"{100 * result.pruned_map:.2f}")
    rows.insert(2, strict)  # under the mAP@0.5 row
    print_table(rows)
    out = result.out_dir
    print(
        f"files: {out / 'search' / 'best_arch.json'} (architecture), {out / 'pruned'} (pruned detector: "
        f"acp.load_pruned({str(out / 'pruned')!r})), {out / 'search' / 'report.png'} (search report), "
        f"{out / 'demo_config.toml'} (its configuration, to edit and rerun with acp run), "
        f"{out / DETECTION_SAMPLE_IMAGE} (a validation image to try the pruned detector on)"
    )
