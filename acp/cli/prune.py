"""``acp prune`` and ``acp export``: a pruned model on disk, and as ONNX."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("acp")


def register(commands) -> None:
    prune = commands.add_parser("prune", help="materialize an architecture from base weights and save it")
    prune.add_argument("arch", help="architecture JSON (e.g. best_arch.json)")
    prune.add_argument(
        "--weights",
        help="weights of the unpruned base model (state_dict; default: [model].weights of the run's "
        "config.toml beside the architecture)",
    )
    prune.add_argument(
        "--random-weights",
        action="store_true",
        help="prune a randomly initialized base model (the structure alone, e.g. to time it); without it "
        "missing weights are an error",
    )
    prune.add_argument("--out", required=True, help="new directory for arch.json + weights.pt")
    prune.set_defaults(handler=run_prune)

    export = commands.add_parser("export", help="export a pruned model to ONNX")
    export.add_argument("arch", help="architecture JSON, or a directory written by acp prune / finetune")
    export.add_argument("--weights", help="the pruned model's weights (default: weights.pt beside the JSON)")
    export.add_argument("--onnx", required=True, help="output .onnx file")
    export.set_defaults(handler=run_export)


def run_prune(args: argparse.Namespace) -> int:
    from acp.cli.common import check_fresh_out_dir
    from acp.fileio import load_weights_into
    from acp.prune import load_architecture, materialize, save_pruned
    from acp.workflows.problem import base_weights

    out = Path(args.out)
    check_fresh_out_dir(out, False, "")
    arch, base, space = load_architecture(args.arch)
    weights = base_weights(args.arch, args.weights, random_weights=args.random_weights)
    if weights is None:
        log.warning("--random-weights: the pruned model inherits randomly initialized weights")
    else:
        load_weights_into(base, weights)
    save_pruned(materialize(base, arch, space), arch, out)
    print(
        f"pruned {arch.model.name}: MACs {arch.base_macs:,} -> {arch.macs:,} ({100 * arch.macs_ratio:.1f}%), "
        f"params {arch.base_params:,} -> {arch.params:,} ({100 * arch.params_ratio:.1f}%)"
    )
    print(f"wrote {out / 'arch.json'} and {out / 'weights.pt'} (load with acp.load_pruned({str(out)!r}))")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import importlib.util

    from acp.core.architecture import Architecture
    from acp.models.detection import is_detector
    from acp.prune import (
        architecture_file,
        export_onnx,
        load_pruned,
        onnx_detection_difference,
        onnx_max_difference,
    )

    model = load_pruned(args.arch, args.weights)
    arch = Architecture.load(architecture_file(args.arch))
    path = export_onnx(model, arch.model.input_size, args.onnx, preprocessing=arch.preprocessing)
    message = f"wrote {path}"
    if is_detector(model):
        message += " (input: image, one float (3, H, W) image in [0, 1]; outputs: boxes, scores, labels)"
        if importlib.util.find_spec("onnxruntime") is not None:
            compared, difference = onnx_detection_difference(model, arch.model.input_size, path)
            message += (
                f"; onnxruntime's top {compared} detections match PyTorch's (max box difference "
                f"{difference:.2e} px)"
                if compared
                else "; onnxruntime runs it (its scores all tie: nothing to compare)"
            )
        print(message)
        return 0
    if importlib.util.find_spec("onnxruntime") is not None:
        difference = onnx_max_difference(model, arch.model.input_size, path)
        message += f" (onnxruntime output matches PyTorch: max abs difference {difference:.2e})"
    print(message)
    if arch.preprocessing is None:
        log.warning(
            "%s records no preprocessing (written before acp recorded it): the ONNX file has no acp.mean/"
            "acp.std metadata; normalize inputs as the base model was trained",
            args.arch,
        )
    else:
        print("its metadata_props hold the preprocessing: acp.mean, acp.std, acp.input_size, acp.class_names")
    return 0
