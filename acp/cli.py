"""The ``acp`` command: a thin shell that parses flags, calls the API and maps errors to exit codes.

Exit codes (contract): 0 success; 2 user error (one line on stderr, no traceback); 1 internal error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from acp.argtypes import positive_int as _positive_int
from acp.errors import UserError, one_line

log = logging.getLogger("acp")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line with exit code 2 (the user-error contract)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------------------- helpers


def _check_fresh_out_dir(out: Path, resume: bool, marker: str) -> None:
    """Refuse to write into a non-empty directory unless resuming a run of the same kind."""
    if resume:
        if not (out / marker).is_file():
            raise UserError(f"--resume: {out} has no {marker} to resume from")
        return
    from acp.fileio import require_fresh_output

    require_fresh_output(out, "pick a new directory or pass --resume")


def _load_data_and_splits(spec: str, split: str, seed: int):
    from acp.data import load_data, make_splits

    data = load_data(spec)
    return data, make_splits(data, split, seed=seed)


def _build_model(name: str, num_classes: int | None, weights: str | None):
    from acp.fileio import load_weights_into
    from acp.models import create_model

    model = create_model(name, num_classes=num_classes)
    if weights is not None:
        load_weights_into(model, weights)
    return model


def _check_input_fits(model, image_shape: tuple[int, int, int], spec: str) -> None:
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape))
    except RuntimeError as error:
        raise UserError(
            f"images of data {spec} ({'x'.join(map(str, image_shape))}) do not fit the model: "
            f"{one_line(error)[:160]}"
        ) from None


def _count(model, image_shape) -> tuple[int, int]:
    import torch
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model.eval(), torch.zeros(1, *image_shape))
    return int(macs), int(params)


# ----------------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from acp.data import dump_description
    from acp.fileio import atomic_write_json
    from acp.train import CHECKPOINT_NAME, Schedule, train

    out = Path(args.out)
    _check_fresh_out_dir(out, args.resume, CHECKPOINT_NAME)
    schedule = Schedule(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        seed=args.seed,
        warmup_fraction=args.warmup,
    )
    data, splits = _load_data_and_splits(args.data, args.split, args.seed)
    model = _build_model(args.model, data.num_classes, args.weights)
    _check_input_fits(model, data.image_shape, args.data)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"name": args.model, "num_classes": data.num_classes, "input_size": list(data.image_shape)}
    atomic_write_json(out / "model.json", identity)
    dump_description(out / "data.json", data, splits)
    history = train(
        model, data, splits.train, splits.val, schedule, out, resume=args.resume, progress=not args.quiet
    )
    final = history[-1]
    print(
        f"trained {args.model} for {final.epoch} epochs: val accuracy {final.val_accuracy:.4f}, "
        f"val loss {final.val_loss:.4f}"
    )
    print(f"weights: {out / 'weights.pt'}  metrics: {out / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from acp.train import evaluate

    if args.arch is not None:
        return _eval_arch(args)
    if args.model is None:
        raise UserError("acp eval: give an architecture JSON or --model NAME")
    data, splits = _load_data_and_splits(args.data, args.split_method, args.seed)
    model = _build_model(args.model, data.num_classes, args.weights)
    _check_input_fits(model, data.image_shape, args.data)
    indices = _split_indices(data, splits, args.split)
    accuracy, loss = evaluate(model, data, indices)
    macs, params = _count(model, data.image_shape)
    print(f"{args.model} on {args.data} [{args.split}, {len(indices)} images]")
    print(f"top-1 accuracy {accuracy * 100:.2f}%  loss {loss:.4f}  MACs {macs:,}  params {params:,}")
    return 0


def _split_indices(data, splits, split: str):
    import numpy as np

    return {"train": splits.train, "val": splits.val, "all": np.arange(len(data))}[split]


def _pruned_model_from(arch_path: str, weights: str | None):
    """The pruned model of ``arch_path``: ``weights`` are the pruned model's own (as saved by prune /
    finetune), or -- recognized by their shapes -- the unpruned base model's, then materialized."""
    from acp.arch import Architecture
    from acp.fileio import load_state_dict_file
    from acp.prune import build_space, load_pruned, materialize

    if weights is not None and not Path(arch_path).is_dir():
        base, space = build_space(Architecture.load(arch_path).model, Architecture.load(arch_path).space)
        state = load_state_dict_file(weights)
        base_shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} == base_shapes:
            arch, base, space = _load_arch_for_model(arch_path, weights)
            return materialize(base, arch, space)
    return load_pruned(arch_path, weights)


def _eval_arch(args: argparse.Namespace) -> int:
    from acp.arch import Architecture
    from acp.train import evaluate

    model = _pruned_model_from(args.arch, args.weights)
    data, splits = _load_data_and_splits(args.data, args.split_method, args.seed)
    arch_file = Path(args.arch) / "arch.json" if Path(args.arch).is_dir() else Path(args.arch)
    input_size = tuple(Architecture.load(arch_file).model.input_size)
    if data.image_shape != input_size:  # the recorded MACs/params hold only at the architecture's size
        raise UserError(
            f"images of data {args.data} are {'x'.join(map(str, data.image_shape))}, but the architecture's "
            f"input size is {'x'.join(map(str, input_size))}"
        )
    _check_input_fits(model, data.image_shape, args.data)
    indices = _split_indices(data, splits, args.split)
    accuracy, loss = evaluate(model, data, indices)
    macs, params = _count(model, data.image_shape)
    print(f"{args.arch} on {args.data} [{args.split}, {len(indices)} images]")
    print(f"top-1 accuracy {accuracy * 100:.2f}%  loss {loss:.4f}  MACs {macs:,}  params {params:,}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from acp.problem import load_problem, resolve_config

    problem = load_problem(resolve_config(args.config_or_model))
    space = problem.space
    print(
        f"model {problem.identity.name}  input {'x'.join(map(str, problem.identity.input_size))}  "
        f"weights {problem.weights or '(random init)'}"
    )
    print(
        f"base: {space.base_macs:,} MACs (= 'FLOPs' as pruning papers count them), "
        f"{space.base_params:,} params"
    )
    print(
        f"{len(space.groups)} searchable channel groups (round_to={space.settings['round_to']}, "
        f"min_keep={space.settings['min_keep']}):"
    )
    rows = [("group", "width", "min", "MACs at stake", "members")]
    full = space.full_widths()
    for index, group in enumerate(space.groups):
        lowest = full.copy()
        lowest[index] = group.min_width
        saved = space.base_macs - space.cost(lowest)[0]
        members = ", ".join(group.producers[:3]) + (
            f" +{len(group.producers) - 3}" if len(group.producers) > 3 else ""
        )
        rows.append(
            (
                group.id,
                str(group.full_width),
                str(group.min_width),
                f"{100 * saved / space.base_macs:.1f}%",
                members,
            )
        )
    _print_table(rows)
    if space.fixed_groups:
        print(f"{len(space.fixed_groups)} groups kept at full width:")
        for fixed in space.fixed_groups:
            print(f"  {fixed.id} ({fixed.full_width}): {fixed.reason}")
    print("'MACs at stake' = share of the base MACs saved by shrinking only that group to its minimum width")
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _load_arch_for_model(arch_path: str, weights: str | None):
    """The architecture (validated against its model's space), the base model with weights, and the space."""
    from acp.arch import Architecture
    from acp.fileio import load_weights_into
    from acp.prune import build_space

    peek = Architecture.load(arch_path)
    base, space = build_space(peek.model, peek.space)
    arch = Architecture.load(arch_path, space)
    if weights is None:
        log.warning("no --weights: the pruned model inherits randomly initialized weights")
    else:
        load_weights_into(base, weights)
    return arch, base, space


def cmd_prune(args: argparse.Namespace) -> int:
    from acp.prune import materialize, save_pruned

    out = Path(args.out)
    _check_fresh_out_dir(out, False, "")
    arch, base, space = _load_arch_for_model(args.arch, args.weights)
    pruned = materialize(base, arch, space)
    save_pruned(pruned, arch, out)
    print(
        f"pruned {arch.model.name}: MACs {arch.base_macs:,} -> {arch.macs:,} ({100 * arch.macs_ratio:.1f}%), "
        f"params {arch.base_params:,} -> {arch.params:,} ({100 * arch.params_ratio:.1f}%)"
    )
    print(f"wrote {out / 'arch.json'} and {out / 'weights.pt'} (load with acp.load_pruned({str(out)!r}))")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from acp.prune import export_onnx, load_pruned

    model = load_pruned(args.arch, args.weights)
    from acp.arch import Architecture

    arch = Architecture.load(args.arch if not Path(args.arch).is_dir() else Path(args.arch) / "arch.json")
    path = export_onnx(model, arch.model.input_size, args.onnx)
    message = f"wrote {path}"
    if _onnxruntime_available():
        difference = _onnx_max_difference(model, arch.model.input_size, path)
        message += f" (onnxruntime output matches PyTorch: max abs difference {difference:.2e})"
    print(message)
    return 0


def _onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _onnx_max_difference(model, input_size, path) -> float:
    import numpy as np
    import onnxruntime
    import torch

    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(example).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": example.numpy()})
    difference = float(np.abs(actual - expected).max())
    if not np.allclose(actual, expected, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"ONNX export of {path} disagrees with PyTorch (max abs difference {difference})")
    return difference


def cmd_finetune(args: argparse.Namespace) -> int:
    from acp.finetune import finetune
    from acp.train import Schedule

    schedule = Schedule(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        distill_temperature=args.temperature,
        distill_alpha=args.alpha,
    )
    result = finetune(
        args.arch,
        out_dir=args.out,
        weights=args.weights,
        data=args.data,
        split=args.split,
        schedule=schedule,
        distill=args.distill,
        resume=args.resume,
        progress=not args.quiet,
    )
    _print_finetune_summary(result.metrics, result.out_dir)
    return 0


def _print_finetune_summary(metrics: dict, out_dir: Path) -> None:
    from acp.finetune import summary_rows

    _print_table(summary_rows(metrics))
    print(f"pruned model: {out_dir} (acp.load_pruned({str(out_dir)!r})); metrics.json, training_curve.png")


def cmd_demo(args: argparse.Namespace) -> int:
    from acp.demo import run_demo
    from acp.finetune import summary_rows

    result = run_demo(args.out, quick=args.quick, progress=not args.quiet)
    print(f"acp demo finished in {result.seconds:.0f} s: {DEMO_BLURB}")
    _print_table(summary_rows(result.metrics))
    out = result.out_dir
    print(
        f"files: {out / 'search' / 'best_arch.json'} (architecture), {out / 'pruned'} (pruned model: "
        f"acp.load_pruned({str(out / 'pruned')!r})), {out / 'report.png'} (search report)"
    )
    return 0


DEMO_BLURB = "ResNet-8 on scikit-learn digits, pruned to 50% of the MACs"


def cmd_cluster(args: argparse.Namespace) -> int:
    from acp.cluster import proposal_to_architecture, propose_widths
    from acp.criteria import make_criterion
    from acp.data import take_stratified
    from acp.features import collect_statistics
    from acp.problem import load_problem, resolve_config

    config = resolve_config(args.config)
    flops = args.flops if args.flops is not None else config["budget"]["flops"]
    params = args.params if args.params is not None else config["budget"]["params"]
    if args.mode == "budget" and flops is None and params is None:
        raise UserError("acp cluster: give a budget (--flops R and/or --params R, or [budget] in the config)")
    problem = load_problem(config)
    data, splits = problem.data()
    seed = config["data"]["seed"]
    calibration = take_stratified(splits.train, data.labels, args.images, seed=seed)
    images, labels = data.tensors(calibration)
    statistics = collect_statistics(
        problem.model, problem.space, images, labels=labels, num_images=len(images)
    )
    if args.mode == "budget":
        proposal = propose_widths(statistics, problem.space, flops=flops, params=params)
    else:
        if args.eps is None:
            raise UserError("acp cluster --mode dbscan needs --eps (the ACP paper used 0.007 on CIFAR)")
        proposal = propose_widths(
            statistics, problem.space, mode="dbscan", eps=args.eps, min_samples=args.min_samples
        )
    criterion = make_criterion(
        args.criterion, problem.space, model=problem.model, statistics=statistics, seed=seed
    )
    arch = proposal_to_architecture(
        proposal, problem.space, problem.identity, criterion, space_settings=problem.space.settings, seed=seed
    )
    for line in proposal.summary_lines():
        print(line)
    out = Path(args.out) if args.out else Path("proposal_arch.json")
    arch.save(out)
    print(f"wrote {out} (channels chosen by the '{args.criterion}' criterion)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from acp.pipeline import run_pipeline

    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"acp run: --epochs must be a positive integer, got {args.epochs}")
    result = run_pipeline(
        args.config,
        out=args.out,
        resume=args.resume,
        flops=args.flops,
        params=args.params,
        epochs=args.epochs,
        distill=True if args.distill else None,
        workers=args.workers,
        progress=not args.quiet,
    )
    for line in result.search.summary_lines():
        print(line)
    _print_finetune_summary(result.finetune.metrics, result.finetune.out_dir)
    return 0


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acp", description="Automatic channel pruning for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=f"acp {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser("demo", help="the whole pipeline on a built-in example (a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="new output directory (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="smallest sizes (a smoke test, ~1 minute)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo)

    train = commands.add_parser("train", help="train a base model")
    train.add_argument("--model", required=True, help="registry/torchvision name or package.module:factory")
    train.add_argument("--data", required=True, help="data SPEC: ImageFolder path, CIFAR dir, or 'digits'")
    train.add_argument("--epochs", type=_positive_int, required=True)
    train.add_argument("--out", required=True, help="output directory (new, or existing with --resume)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--weights", help="initialize from these weights (state_dict)")
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    train.add_argument("--warmup", type=float, default=0.15, help="one-cycle warm-up fraction")
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    train.add_argument("--split", default="auto", help="'auto', 'shared', 'tail:K' or 'random:F'")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="accuracy, loss, MACs and params of a model")
    evaluate.add_argument("arch", nargs="?", help="architecture JSON of a pruned model (optional)")
    evaluate.add_argument("--model", help="model name (when no architecture is given)")
    evaluate.add_argument("--weights", help="state_dict file")
    evaluate.add_argument("--data", required=True, help="data SPEC")
    evaluate.add_argument("--split", choices=["train", "val", "all"], default="val")
    evaluate.add_argument("--split-method", default="auto", help="how val is held out (as in acp train)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(handler=cmd_eval)

    info = commands.add_parser("info", help="channel groups, widths and base cost of a config or model")
    info.add_argument("config_or_model", help="a search-space TOML file or a model name")
    info.set_defaults(handler=cmd_info)

    cluster = commands.add_parser("cluster", help="propose widths by feature-map clustering under a budget")
    cluster.add_argument("config", help="a search-space TOML file")
    cluster.add_argument("--flops", type=float, help="keep this ratio of the base MACs, e.g. 0.5")
    cluster.add_argument("--params", type=float, help="keep this ratio of the base parameters")
    cluster.add_argument(
        "--mode",
        choices=["budget", "dbscan"],
        default="budget",
        help="budget: hierarchical clustering cut onto the budget (default); dbscan: ACP paper",
    )
    cluster.add_argument("--eps", type=float, help="DBSCAN eps (dbscan mode)")
    cluster.add_argument("--min-samples", type=_positive_int, default=5, help="DBSCAN min_samples")
    cluster.add_argument(
        "--images", type=_positive_int, default=256, help="calibration images (training split)"
    )
    cluster.add_argument(
        "--criterion", default="l2", help="which channels survive (l2, l1, cluster, ...; default l2)"
    )
    cluster.add_argument("--out", help="architecture JSON to write (default: proposal_arch.json)")
    cluster.set_defaults(handler=cmd_cluster)

    from acp.search.command import register as register_search

    register_search(commands)

    run = commands.add_parser("run", help="search, then finetune the winner (each stage resumable)")
    run.add_argument("config", nargs="?", help="search-space TOML (optional with --resume)")
    run.add_argument("--out", help="new run directory (search in DIR, finetuned model in DIR/finetune)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR, whichever stage it stopped in")
    run.add_argument("--flops", type=float, help="keep at most this ratio of the base MACs")
    run.add_argument("--params", type=float, help="keep at most this ratio of the base params")
    run.add_argument("--epochs", type=int, help="finetuning epochs (default: [finetune].epochs)")
    run.add_argument(
        "--distill", action="store_true", help="distill from the unpruned model while finetuning"
    )
    run.add_argument("--workers", type=_positive_int, help="parallel evaluation processes for the search")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=cmd_run)

    prune = commands.add_parser("prune", help="materialize an architecture from base weights and save it")
    prune.add_argument("arch", help="architecture JSON (e.g. best_arch.json)")
    prune.add_argument("--weights", help="weights of the unpruned base model (state_dict)")
    prune.add_argument("--out", required=True, help="new directory for arch.json + weights.pt")
    prune.set_defaults(handler=cmd_prune)

    tune = commands.add_parser("finetune", help="retrain a pruned architecture from the base weights")
    tune.add_argument("arch", help="architecture JSON (e.g. runs/r20/best_arch.json)")
    tune.add_argument("--weights", help="unpruned base weights (default: from the run's config.toml)")
    tune.add_argument("--data", help="data SPEC (default: from the run's config.toml)")
    tune.add_argument("--split", help="validation split (default: the run's, else 'auto')")
    tune.add_argument("--epochs", type=_positive_int, required=True)
    tune.add_argument("--out", required=True, help="new directory (or existing with --resume)")
    tune.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tune.add_argument("--distill", action="store_true", help="knowledge distillation from the unpruned model")
    tune.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    tune.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")
    tune.add_argument("--batch-size", type=_positive_int, default=128)
    tune.add_argument("--lr", type=float, default=0.02)
    tune.add_argument("--weight-decay", type=float, default=5e-4)
    tune.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    tune.add_argument("--label-smoothing", type=float, default=0.0)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(handler=cmd_finetune)

    export = commands.add_parser("export", help="export a pruned model to ONNX")
    export.add_argument("arch", help="architecture JSON, or a directory written by acp prune / finetune")
    export.add_argument("--weights", help="the pruned model's weights (default: weights.pt beside the JSON)")
    export.add_argument("--onnx", required=True, help="output .onnx file")
    export.set_defaults(handler=cmd_export)
    return parser


def _version() -> str:
    from acp import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        if not getattr(args, "handler", None):
            build_parser().print_help()
            return 2
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"acp: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
