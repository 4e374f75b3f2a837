"""The ``acp`` command: a thin shell that parses flags, calls the API and maps errors to exit codes.

Exit codes (contract): 0 success; 2 user error (one line on stderr, no traceback); 1 internal error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from acp.errors import UserError, one_line

log = logging.getLogger("acp")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line with exit code 2 (the user-error contract)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------------------- helpers


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_fresh_out_dir(out: Path, resume: bool, marker: str) -> None:
    """Refuse to write into a non-empty directory unless resuming a run of the same kind."""
    if resume:
        if not (out / marker).is_file():
            raise UserError(f"--resume: {out} has no {marker} to resume from")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty; pick a new directory or pass --resume")


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


def _eval_arch(args: argparse.Namespace) -> int:
    from acp.prune import load_pruned
    from acp.train import evaluate

    model = load_pruned(args.arch, args.weights)
    data, splits = _load_data_and_splits(args.data, args.split_method, args.seed)
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
    rows = [("", "base", "pruned")]
    rows.append(
        (
            "val accuracy",
            f"{100 * metrics['base_val_accuracy']:.2f}%",
            f"{100 * metrics['val_accuracy_after']:.2f}% (before finetuning "
            f"{100 * metrics['val_accuracy_before']:.2f}%)",
        )
    )
    rows.append(
        ("MACs", f"{metrics['base_macs']:,}", f"{metrics['macs']:,} ({100 * metrics['macs_ratio']:.1f}%)")
    )
    rows.append(
        (
            "params",
            f"{metrics['base_params']:,}",
            f"{metrics['params']:,} ({100 * metrics['params_ratio']:.1f}%)",
        )
    )
    for batch, latency in metrics.get("latency_cpu", {}).items():
        rows.append(
            (
                f"latency {batch}",
                f"{latency['base_ms']:.2f} ms",
                f"{latency['pruned_ms']:.2f} ms ({latency['speedup']:.2f}x faster)",
            )
        )
    _print_table(rows)
    print(f"pruned model: {out_dir} (acp.load_pruned({str(out_dir)!r})); metrics.json, training_curve.png")


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acp", description="Automatic channel pruning for PyTorch CNNs.")
    parser.add_argument("--version", action="version", version=f"acp {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
