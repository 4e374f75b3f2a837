"""Fidelity of the detection proxy: which ``[proxy] score`` ranks candidates as a short finetune does?

    python benchmarks/bench_detection_fidelity.py [--candidates 24] [--epochs 2] [--out /tmp/acp17/detection]
    python benchmarks/bench_detection_fidelity.py --quick --out /tmp/bench_det_fid_quick --no-write

The base detector is bench_detection.py's (trained once and cached under ``--out/base``: SSDlite320 with
MobileNetV3 at 0.25 width, 20 epochs from scratch on ``shapes:64``, split ``random:0.2``). ``--candidates``
random architectures at 50% MACs (seeded keep ratios uniform in [0.2, 1], repaired onto the budget; l2
channels, the search's default criterion) are scored by the detection proxy exactly as bench_detection's
acp search scores them (BatchNorm recalibrated on 4 batches of 8 training images, then 48 proxy-validation
*training* images), once per ``[proxy] score``:

- ``map50``  mAP@0.5 of the proxy-validation detections (torchmetrics on faster-coco-eval);
- ``map``    mAP@[.5:.95] of the same detections;
- ``loss``   the detector's own training loss (box regression + classification) on the same images, negated
             so that higher is better;

and then every candidate is finetuned with one recipe (acp/train/detection_finetune.py, bench_detection's
finetune shortened to ``--epochs``; seed 0) and scored, as truth, by mAP@0.5 and mAP@[.5:.95] on
``TRUTH_IMAGES`` training images held out of that finetune and disjoint from the proxy's images. The
validation split, on which bench_detection.py reports, is never used here: this study *chooses* the
default score, so it must not look at the reporting split. Reported: Spearman and Kendall correlation of
each proxy score with each truth (the search needs the ranking, not the value), the top-5 overlap, and the
seconds per evaluation. Results are
cached as JSON lines in ``--out/fidelity`` and a rerun resumes. Results go to benchmarks/RESULTS.md,
section "Detection proxy fidelity (bench_detection_fidelity.py)".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import provenance_lines, update_section  # noqa: E402
from bench_detection import THREADS, Setup, detection_maps  # noqa: E402
from bench_detection import parse_args as detection_args  # noqa: E402

from acp.proxy.detection_score import quiet_coco_eval  # noqa: E402

SECTION = "Detection proxy fidelity (bench_detection_fidelity.py)"
SCORES = ("map50", "map", "loss")
BUDGET = 0.5
TOP = 5
TRUTH_IMAGES = 100  # training images held out of the short finetune: the truth's images
TRUTHS = ("map50", "map")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2, help="the short finetune each candidate gets")
    parser.add_argument("--out", type=Path, default=Path("/tmp/acp17/detection"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 candidates, tiny sizes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.candidates, args.epochs = 4, 1
    return args


def read_jsonl(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    return {record["candidate"]: record for record in map(json.loads, path.read_text().splitlines())}


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def candidate_widths(setup: Setup, count: int) -> np.ndarray:
    from acp.core.budget import Budget

    ratios = np.random.default_rng(0).uniform(0.2, 1.0, (count, len(setup.space.groups)))
    return Budget(setup.space, flops=BUDGET).repair(ratios)


def proxy_scores(setup: Setup, widths: np.ndarray, criterion) -> dict:
    """Every score of SCORES for one candidate, each from a fresh evaluation (seconds included)."""
    from acp.proxy.detection import DetectionProxyEvaluator, default_detection_proxy_data

    proxy = setup.settings.proxy
    data = default_detection_proxy_data(setup.data, setup.splits.train, proxy, seed=setup.settings.data.seed)
    found = {}
    for score in SCORES:
        settings = proxy.replace(score=score)
        evaluator = DetectionProxyEvaluator(
            setup.model, setup.space, criterion, data, settings, identity=setup.identity
        )
        with quiet_coco_eval():
            result = evaluator.evaluate(widths)
        if not result.ok:
            raise RuntimeError(f"proxy evaluation failed: {result.status}")
        found[score] = {"score": float(result.score), "seconds": float(result.seconds)}
    return found


def truth_splits(setup: Setup):
    """(finetune on, truth on): TRUTH_IMAGES training images outside the proxy's calibration and
    validation images (a seeded draw) are the truth; the finetune trains on the rest of the training split."""
    from acp.data import Splits
    from acp.proxy.detection import detection_proxy_slices

    proxy = setup.settings.proxy
    train = np.unique(np.asarray(setup.splits.train))
    calibration, validation = detection_proxy_slices(
        train, proxy.calibration_images, proxy.validation_images, seed=setup.settings.data.seed
    )
    free = np.setdiff1d(train, np.concatenate([calibration, validation]))
    truth = np.sort(np.random.default_rng(1).permutation(free)[:TRUTH_IMAGES])
    return Splits("fidelity", 1, np.setdiff1d(train, truth), truth)


def short_finetune(setup: Setup, arch, out: Path, epochs: int, splits) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) on ``splits.val`` after ``epochs`` of the benchmark's finetune (seed 0) on
    ``splits.train``."""
    from acp.proxy.detection_score import score_detector
    from acp.settings import Schedule
    from acp.train.detection_finetune import finetune_detector

    schedule = Schedule(epochs=epochs, lr=setup.finetune_lr, **setup.recipe)
    with quiet_coco_eval():
        tuned = finetune_detector(
            arch,
            setup.model,
            setup.space,
            setup.data,
            splits,
            out_dir=out,
            schedule=schedule,
            score_detector=score_detector,
            threads=THREADS,
            progress=False,
            measure_latency_of_models=False,
        )
    return detection_maps(tuned.model, setup.data, splits.val)


def measure(args, setup: Setup) -> list[dict]:
    import shutil

    from acp.propose.criteria import make_criterion

    work = args.out / "fidelity"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"results_e{args.epochs}.jsonl"
    done = read_jsonl(path)
    criterion = make_criterion("l2", setup.space, model=setup.model, seed=0)
    splits = truth_splits(setup)
    for index, widths in enumerate(candidate_widths(setup, args.candidates)):
        if index in done:
            continue
        began = time.perf_counter()
        scores = proxy_scores(setup, widths, criterion)
        arch = setup.architecture(widths, BUDGET, "manual", criterion)
        train_dir = work / f"candidate{index}"
        shutil.rmtree(train_dir, ignore_errors=True)
        finetuned = short_finetune(setup, arch, train_dir, args.epochs, splits)
        shutil.rmtree(train_dir, ignore_errors=True)
        record = {
            "candidate": index,
            "widths": [int(w) for w in widths],
            "macs_ratio": arch.macs_ratio,
            "params_ratio": arch.params_ratio,
            "scores": scores,
            "finetuned": dict(zip(TRUTHS, finetuned)),
            "seconds": time.perf_counter() - began,
        }
        append_jsonl(path, record)
        done[index] = record
        print(
            f"candidate {index}: "
            + ", ".join(f"{s} {scores[s]['score']:.4f}" for s in SCORES)
            + f"; finetuned mAP@0.5 {100 * finetuned[0]:.1f}, mAP {100 * finetuned[1]:.1f} "
            f"({record['seconds']:.0f} s)",
            flush=True,
        )
    return [done[index] for index in range(args.candidates)]


def report(args, setup: Setup, records: list[dict], seconds: float) -> list[str]:
    from scipy.stats import kendalltau, spearmanr

    proxy = setup.settings.proxy
    truths = {truth: np.array([r["finetuned"][truth] for r in records]) for truth in TRUTHS}
    ranges = "; ".join(
        f"{truth} {100 * values.min():.1f}-{100 * values.max():.1f} (median {100 * np.median(values):.1f})"
        for truth, values in truths.items()
    )
    lines = [
        *provenance_lines("bench_detection_fidelity.py", "1 process, 1 torch thread", {}),
        "",
        f"{len(records)} random candidates at {BUDGET:.0%} MACs (MACs ratios "
        f"{min(r['macs_ratio'] for r in records):.3f}-{max(r['macs_ratio'] for r in records):.3f}, params "
        f"{min(r['params_ratio'] for r in records):.1%}-{max(r['params_ratio'] for r in records):.1%}) of "
        f"bench_detection.py's base (trained {setup.base_record['epochs']} epochs); proxy: BatchNorm "
        f"recalibrated on {proxy.calibration_batches} x {proxy.calibration_batch_size} training images, "
        f"scored on {proxy.validation_images} proxy-validation training images. Truth: after {args.epochs} "
        f"finetune epochs (seed 0) on the rest of the training split, on {TRUTH_IMAGES} held-out training "
        f"images disjoint from the proxy's (the validation split is not used): {ranges}.",
        "",
        "| [proxy] score | seconds per evaluation (median) | "
        + " | ".join(f"Spearman / Kendall / top-{TOP} vs finetuned {truth}" for truth in TRUTHS)
        + " |",
        "|---|---|" + "---|" * len(TRUTHS),
    ]
    for score in SCORES:
        values = np.array([r["scores"][score]["score"] for r in records])
        timing = float(np.median([r["scores"][score]["seconds"] for r in records]))
        cells = []
        for truth in truths.values():
            rho, tau = spearmanr(values, truth).statistic, kendalltau(values, truth).statistic
            overlap = len(set(np.argsort(-truth)[:TOP].tolist()) & set(np.argsort(-values)[:TOP].tolist()))
            cells.append(f"{rho:.3f} / {tau:.3f} / {overlap}/{TOP}")
        lines.append(f"| {score} | {timing:.2f} s | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time of this invocation: {seconds / 60:.1f} min (cached candidates are not redone)."]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    began = time.perf_counter()
    setup_args = detection_args(["--out", str(args.out), *(["--quick"] if args.quick else [])])
    setup = Setup(setup_args)
    records = measure(args, setup)
    lines = report(args, setup, records, time.perf_counter() - began)
    print("\n".join(lines), flush=True)
    if not (args.no_write or args.quick):
        update_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
