"""Fidelity of the proxy: does its ranking of candidates agree with the ranking after a real finetune?

    python benchmarks/bench_proxy_fidelity.py [--candidates 32] [--finetune-images 8000] [--threads 1]
        [--shard I/N] [--variants] [--finetune-steps-variant N] [--work /tmp/acp_proxy_fidelity] [--no-write]

On the shared ResNet-20 (CIFAR-10), ``--candidates`` random width vectors at 50% MACs (within 1%, l1
channel selection) are scored by
  (a) the default proxy (``ProxySettings()``: 20 calibration batches of 64 images, 2,000 class-balanced
      proxy-validation images, both held out of the training split),
  (b) the same without BatchNorm recalibration,
  variants: the loss score; with ``--variants`` K in {5, 10, 40} calibration batches (snapshots of one
      cumulative pass over the same slices); optionally N finetune steps before scoring,
and (c) the validation-split accuracy (the shared split's 5,000 images, never seen by the proxy) after one
epoch of finetuning on a fixed stratified subset of the training split (same recipe for every candidate:
``acp.train.loop.train``, SGD nesterov, lr 0.05 cosine, wd 5e-4, batch 128, crop+flip, seed 0).
Reports Spearman and Kendall correlations of each proxy with (c). Results are cached in ``--work`` (JSON
lines, one file for proxies, one for finetunes), so ``--shard 0/2`` and ``--shard 1/2`` can run side by
side and a final run without ``--shard`` (or with ``--skip-finetune``) reports on everything cached.
Results go to benchmarks/RESULTS.md (section "Proxy fidelity (bench_proxy_fidelity.py)").
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import CIFAR, candidates_at_budget, environment, load_base, update_results_section  # noqa: E402

CALIBRATION_BATCH = 64
K_VARIANTS = (5, 10, 40)


def read_jsonl(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {record["key"]: record for record in records}


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def per_image(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500):
    """(correct flags, per-image losses) in eval mode."""
    model.eval()
    correct, losses = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            target = labels[start : start + batch_size]
            correct.append((logits.argmax(1) == target).numpy())
            losses.append(
                torch.nn.functional.cross_entropy(logits, target, reduction="none").double().numpy()
            )
    return np.concatenate(correct), np.concatenate(losses)


def variant_scores(evaluator, base, proxy_data, widths) -> dict[str, float]:
    """K-batch variants on the default slices: one cumulative calibration pass gives every K."""
    from acp.proxy.evaluator import batchnorm_layers, combined_score
    from acp.prune import materialize

    model = materialize(base, evaluator.architecture(widths), evaluator.space).eval()
    norms = batchnorm_layers(model)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    batches = proxy_data.calibration_batches(CALIBRATION_BATCH, max(K_VARIANTS))
    images, labels = proxy_data.validation_images, proxy_data.validation_labels
    scores: dict[str, float] = {}
    for index, batch in enumerate(batches, start=1):
        for norm in norms:
            norm.train()
        with torch.inference_mode():
            model(batch)
        if index in K_VARIANTS:
            correct, losses = per_image(model, images, labels)
            count, loss = len(correct), float(losses.mean())
            scores[f"K{index}/acc"] = combined_score(int(correct.sum()), loss, count, "accuracy")
            scores[f"K{index}/loss"] = -loss
    return scores


def finetune(widths, evaluator, base, data, train_subset, val_indices, threads: int) -> dict:
    from bench_common import short_finetune_schedule

    from acp.prune import materialize
    from acp.train.loop import train

    model = materialize(base, evaluator.architecture(widths), evaluator.space)
    schedule = short_finetune_schedule(seed=0)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        history = train(model, data, train_subset, val_indices, schedule, out, progress=False)
    return {
        "val_accuracy": history[-1].val_accuracy,
        "val_loss": history[-1].val_loss,
        "seconds": time.perf_counter() - began,
        "threads": threads,
    }


def correlations(proxy: list[float], truth: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    return float(spearmanr(proxy, truth).statistic), float(kendalltau(proxy, truth).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--finetune-images", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="/tmp/acp_proxy_fidelity")
    parser.add_argument(
        "--skip-finetune", action="store_true", help="proxies only (finetunes from the cache)"
    )
    parser.add_argument(
        "--finetune-steps-variant", type=int, default=0, help="also score with N finetune steps"
    )
    parser.add_argument("--variants", action="store_true", help="also score the K-batch variants")
    parser.add_argument("--only-cached", action="store_true", help="only candidates with cached proxies")
    parser.add_argument("--shard", default="0/1", help="I/N: this process handles candidates I, I+N, ...")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    shard, shards = (int(part) for part in args.shard.split("/"))
    if not CIFAR.is_dir():
        sys.exit(f"needs {CIFAR} and the shared weights")

    from acp.data import load_data, make_splits, take_stratified
    from acp.propose.criteria import make_criterion
    from acp.proxy.data import ProxyData
    from acp.proxy.evaluator import ProxyEvaluator
    from acp.settings import ProxySettings

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    env = environment()
    data = load_data(str(CIFAR))
    splits = make_splits(data, "shared")
    model, identity, space = load_base("resnet20_cifar")
    criterion = make_criterion("l1", space, model=model)
    settings = ProxySettings(threads=args.threads)
    # 40 calibration batches so the K variants share the slices; the default proxy uses the first 20
    default_data = ProxyData.from_image_data(
        data,
        splits.train,
        calibration_images=max(K_VARIANTS) * CALIBRATION_BATCH,
        validation_images=2000,
        seed=0,
    )
    default = ProxyEvaluator(model, space, criterion, default_data, settings, identity=identity)
    no_recal = ProxyEvaluator(
        model, space, criterion, default_data, ProxySettings(threads=args.threads, recalibrate_bn=False)
    )
    finetuned = ProxyEvaluator(
        model,
        space,
        criterion,
        default_data,
        ProxySettings(threads=args.threads, finetune_steps=max(1, args.finetune_steps_variant)),
    )
    train_subset = take_stratified(splits.train, data.labels, args.finetune_images, seed=0)

    candidates = candidates_at_budget(space, args.candidates, 0.5, args.seed)
    proxies = read_jsonl(work / "proxies.jsonl")
    truths = read_jsonl(work / "finetune.jsonl")
    for number, widths in enumerate(candidates, start=1):
        key = ",".join(str(int(w)) for w in widths)
        if (number - 1) % shards != shard:
            continue
        if key not in proxies and args.only_cached:
            continue
        if key not in proxies:
            a, b = default.evaluate(widths), no_recal.evaluate(widths)
            record = {
                "key": key,
                "macs_ratio": a.macs / space.base_macs,
                "default": a.score,
                "default/loss": -a.loss,
                "default/accuracy": a.accuracy,
                "default/seconds": a.seconds,
                "no_recal": b.score,
                "no_recal/accuracy": b.accuracy,
            }
            proxies[key] = record
            append_jsonl(work / "proxies.jsonl", record)
            print(
                f"[{number}/{len(candidates)}] MACs {record['macs_ratio']:.4f} proxy acc {a.accuracy:.4f} "
                f"({a.seconds:.1f}s) no-recal acc {b.accuracy:.4f}",
                flush=True,
            )
        record = dict(proxies[key])
        if args.variants and "K5/acc" not in record:
            record.update(variant_scores(default, model, default_data, widths))
        if args.finetune_steps_variant and "finetune_steps" not in record:
            record["finetune_steps"] = finetuned.evaluate(widths).score
        if record != proxies[key]:  # later lines of the cache override earlier ones
            proxies[key] = record
            append_jsonl(work / "proxies.jsonl", record)
            print(f"[{number}/{len(candidates)}] variants added", flush=True)
        if key not in truths and not args.skip_finetune:
            truth = {
                "key": key,
                **finetune(widths, default, model, data, train_subset, splits.val, args.threads),
            }
            truths[key] = truth
            append_jsonl(work / "finetune.jsonl", truth)
            print(
                f"[{number}/{len(candidates)}] finetuned val acc {truth['val_accuracy']:.4f} "
                f"({truth['seconds']:.0f}s)",
                flush=True,
            )

    keys = [",".join(str(int(w)) for w in widths) for widths in candidates]
    proxies, truths = read_jsonl(work / "proxies.jsonl"), read_jsonl(work / "finetune.jsonl")  # all shards
    keys = [key for key in keys if key in truths and key in proxies]
    if len(keys) < 3:
        print("not enough finetuned candidates yet")
        return
    truth = [truths[key]["val_accuracy"] for key in keys]
    names = [
        ("(a) default proxy: K=20x64, 2000 val, accuracy score", "default"),
        ("(b) default without BN recalibration", "no_recal"),
        ("default, loss score (-loss)", "default/loss"),
    ]
    if all("finetune_steps" in proxies[key] for key in keys):
        names.append((f"default + {args.finetune_steps_variant} finetune steps (lr 0.01)", "finetune_steps"))
    if all("K5/acc" in proxies[key] for key in keys):
        names += [(f"K={k}x64 calibration, accuracy score", f"K{k}/acc") for k in K_VARIANTS]
        names += [(f"K={k}x64 calibration, loss score", f"K{k}/loss") for k in K_VARIANTS]
    rows = []
    for label, field in names:
        spearman, kendall = correlations([proxies[key][field] for key in keys], truth)
        rows.append(f"| {label} | {spearman:.3f} | {kendall:.3f} |")
        print(f"{label}: Spearman {spearman:.3f} Kendall {kendall:.3f}")
    seconds = np.median([proxies[key]["default/seconds"] for key in keys])
    finetune_seconds = np.median([truths[key]["seconds"] for key in keys])
    proxy_acc = [proxies[key]["default/accuracy"] for key in keys]
    macs = [proxies[key]["macs_ratio"] for key in keys]
    command = "python benchmarks/bench_proxy_fidelity.py " + " ".join(sys.argv[1:])
    body = "\n".join(
        [
            f"Command: `{command.strip()}` — {started:%Y-%m-%d %H:%M} UTC; {env}; "
            f"torch threads = {args.threads}.",
            "",
            f"{len(keys)} random ResNet-20 candidates (shared CIFAR-10 weights, l1 channel selection, "
            f"per-group keep ratios U[0.2, 1] scaled onto the budget) with MACs ratio "
            f"{min(macs):.4f}-{max(macs):.4f}. "
            f"Ground truth (c): validation-split accuracy (shared split, 5,000 images) after 1 epoch of "
            f"finetuning on a fixed stratified {args.finetune_images}-image subset of the training split "
            f"(SGD nesterov, lr 0.05 cosine, wd 5e-4, batch 128, crop+flip, seed 0); range "
            f"{min(truth):.4f}-{max(truth):.4f}, median {np.median(truth):.4f} "
            f"({finetune_seconds:.0f} s each). "
            f"Default proxy accuracy range {min(proxy_acc):.4f}-{max(proxy_acc):.4f}, "
            f"{seconds:.1f} s per evaluation (median). Proxy slices (training split, seed 0): 2,560 "
            f"calibration images (the default uses the first 20 batches of 64; K variants are snapshots "
            f"of one cumulative pass) and 2,000 class-balanced validation images.",
            "",
            "| proxy | Spearman vs (c) | Kendall vs (c) |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(body)
    if not args.no_write:
        update_results_section("Proxy fidelity (bench_proxy_fidelity.py)", body)


if __name__ == "__main__":
    main()
