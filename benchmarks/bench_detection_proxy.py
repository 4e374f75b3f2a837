"""Speed and memory of the detection proxy: seconds per evaluation, overhead over the bare forward passes,
and the evaluating process's peak RSS.

    python benchmarks/bench_detection_proxy.py [--model ssdlite320_mobilenet_v3_large] [--candidates 3]
                                               [--repeats 2] [--validation-images 64] [--no-write]

For torchvision's SSDlite320-MobileNetV3 (full width, random-init weights: time and memory do not depend
on the values; nothing is downloaded) on the generated ``shapes`` images (4 classes with the background;
the detector's transform resizes them to 320 x 320), a few random candidates at 50% MACs (the budget
repair of seeded random keep ratios) are scored by ``DetectionProxyEvaluator.evaluate`` (fresh cache) for
``[proxy] score`` = ``map50`` and ``loss``, and, on the very network that evaluation built, the bare
forward passes over the same images are timed: the calibration batches with BatchNorm in train mode and the
proxy-validation batches in eval mode, under ``torch.inference_mode``. Overhead = evaluation / bare time
(the goal, as for classification: <= 1.2x). Evaluations and bare passes alternate and the median is
reported (a shared machine). Peak RSS is ``resource.getrusage`` of this process after every evaluation
(the goal: < 4 GB per worker). One thread. Results go to benchmarks/RESULTS.md, section "Detection proxy
speed and memory (bench_detection_proxy.py)".
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Detection proxy speed and memory (bench_detection_proxy.py)"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import provenance_lines, update_section  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--data", default="shapes:128")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calibration-batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--validation-images", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: kilobytes


def bare_seconds(model, calibration: list, validation: list) -> float:
    """The forward passes an evaluation makes, on its own network, and nothing else."""
    import torch

    from acp.proxy.evaluator import batchnorm_layers

    started = time.perf_counter()
    model.eval()
    norms = batchnorm_layers(model)
    with torch.inference_mode():
        for norm in norms:
            norm.train()
        for batch in calibration:
            model(batch)
        for norm in norms:
            norm.eval()
        for batch in validation:
            model(batch)
    return time.perf_counter() - started


def rows(args) -> list[dict]:
    import torch

    from acp.core.architecture import ModelIdentity
    from acp.core.budget import Budget
    from acp.detection_data import load_detection_data, make_detection_splits
    from acp.models.detection import detector_input_size
    from acp.propose.criteria import make_criterion
    from acp.proxy.detection import DetectionProxyData, DetectionProxyEvaluator
    from acp.prune import build_space
    from acp.settings import ProxySettings
    from acp.threads import torch_threads

    torch.manual_seed(0)
    data = load_detection_data(args.data)
    splits = make_detection_splits(data, "random:0.1", seed=0)
    kwargs = {"width_mult": 0.5} if args.quick else {}
    identity = ModelIdentity(args.model, data.num_classes, detector_input_size(args.model, kwargs), kwargs)
    model, space = build_space(identity)
    model.eval()
    criterion = make_criterion("l1", space, model=model)
    size = args.batch_size
    proxy_data = DetectionProxyData.from_detection_data(
        data,
        splits.train,
        calibration_images=args.calibration_batches * size,
        validation_images=args.validation_images,
        seed=0,
    )
    rng = np.random.default_rng(0)
    shapes = rng.uniform(0.2, 1.0, (args.candidates, len(space.groups)))
    candidates = Budget(space, flops=0.5).repair(shapes)
    calibration = [
        proxy_data.calibration_images[start : start + size]
        for start in range(0, args.calibration_batches * size, size)
    ]
    validation = [
        proxy_data.validation_images[start : start + size]
        for start in range(0, len(proxy_data.validation_images), size)
    ]
    found = []
    for score in ("map50", "loss"):
        settings = ProxySettings(
            calibration_batches=args.calibration_batches,
            calibration_batch_size=size,
            eval_batch_size=size,
            validation_images=args.validation_images,
            score=score,
            threads=1,
        )
        evaluator = DetectionProxyEvaluator(model, space, criterion, proxy_data, settings, identity=identity)
        evaluator.evaluate(candidates[0])  # first-use imports (torchmetrics, COCO eval) out of the timing
        evaluated, bare = [], []
        for widths in candidates:
            for _ in range(args.repeats):
                evaluator.clear_cache()
                result = evaluator.evaluate(widths)
                if not result.ok:
                    raise SystemExit(f"evaluation failed: {result.status}")
                evaluated.append(result.seconds)
                with torch_threads(1):
                    bare.append(bare_seconds(evaluator.pruned_model(widths), calibration, validation))
        found.append(
            {
                "score": score,
                "seconds": statistics.median(evaluated),
                "bare": statistics.median(bare),
                "overhead": statistics.median(e / b for e, b in zip(evaluated, bare)),
                "rss_gb": peak_rss_gb(),
                "macs": float(np.median(space.cost(candidates)[0] / space.base_macs)),
            }
        )
    return found


def lines_for(found: list[dict], args) -> list[str]:
    images = args.calibration_batches * args.batch_size
    lines = [
        f"{args.model} ({'width_mult 0.5' if args.quick else 'full width'}), {args.data} resized by the "
        f"detector to 320 x 320; {args.candidates} random candidates at 50% MACs (median MACs ratio "
        f"{found[0]['macs']:.3f}) x {args.repeats} repeats; {images} calibration images in batches of "
        f"{args.batch_size}, {args.validation_images} proxy-validation images; 1 thread.",
        "",
        "| [proxy] score | seconds per evaluation | bare forward passes | overhead | peak RSS (process) |",
        "|---|---|---|---|---|",
    ]
    for row in found:
        lines.append(
            f"| {row['score']} | {row['seconds']:.2f} s | {row['bare']:.2f} s | {row['overhead']:.2f}x | "
            f"{row['rss_gb']:.2f} GB |"
        )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.data, args.candidates, args.repeats = "shapes:64", 1, 1
        args.calibration_batches, args.batch_size, args.validation_images = 1, 4, 4
    found = rows(args)
    lines = lines_for(found, args)
    for line in lines:
        print(line)
    if not args.no_write and not args.quick:
        update_section(SECTION, [*provenance_lines("bench_detection_proxy.py"), "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
