"""Record the golden outputs of the ``acp`` command line (tests/test_golden.py recomputes and compares).

First recorded on commit 43f758b (the code before the module restructure, to prove the move changed no
behaviour); re-recorded when behaviour changes on purpose (issue 14: re-ranked finalists, new proxy and
PSO defaults; the JSON files' ``recorded`` field names the commit), with::

    source .venv/bin/activate
    python tests/golden/record.py                    # or --python-path DIR to record another checkout

``--check`` recomputes and compares instead of writing (what tests/test_golden.py does), ``--only NAME``
picks scenarios, ``--cache-dir DIR`` keeps the decoded CIFAR-10 images between runs (the first decoding
of the 50,000 JPEGs takes about 20 s). Each JSON file holds ``recorded`` (commit and package versions:
information only), ``commands``, ``inputs`` (digits only: the initial weights, see below) and
``outputs``, the part that is compared.

Floating point is bit-exact only on one kind of CPU: the same code, packages and thread count give other
bits on a processor with other vector instructions (oneDNN, MKL and numpy pick their kernels by the CPU's
features). ``recorded`` therefore holds ``cpu``, the kind of CPU the files were recorded on
(``cpu_kind()``: vendor, family, model and SIMD feature flags), and tests/test_golden.py compares only
on that kind of CPU and skips, saying why, on any other.

Everything goes through the CLI, ``python -m acp ...`` in subprocesses, never through ``import acp``: the
restructure may move any module, the command line is the contract. Each command runs with
``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1`` (floating point must not depend on the thread count) and
``ACP_CACHE_DIR`` pointing at a private directory; ``--python-path DIR`` puts DIR first on PYTHONPATH
so the subprocesses run the code in DIR instead of the installed acp (the recorder checks that they do).

Three scenarios, one JSON file each (``tests/golden/<scenario>.json``):

``digits``
    ``acp train`` ResNet-8 on 16x16 digits (2 epochs, random:0.2 split, no augmentation, batch 32) from
    fixed initial weights, ``acp search`` with a TINY_SEARCH_CONFIG-like config (3 particles x 2
    iterations, 1 random particle, tiny proxy), ``acp finetune RUN/best_arch.json`` for 1 epoch.
    Recorded: sha256 of the base and the finetuned weights' tensors, the base training curve, every
    history row, best_arch.json, proposal.json, the finetune's metrics.json.
``resnet20``
    ``acp search`` on the shared ResNet-20 and the CIFAR-10 ImageFolder in ../shared (2 particles x 1
    iteration, no random particle, 2 calibration batches of 64, 500 validation images, 50% of the MACs).
    Recorded: the history rows and best_arch.json.
``demo``
    ``acp demo --quick``. Recorded: search/best_arch.json, the search's history rows and
    pruned/metrics.json.

Excluded because they are not reproducible: wall-clock fields (history ``seconds``, epoch ``seconds``,
``latency_cpu``), the evaluating ``worker`` (host:pid), provenance ``created`` (a timestamp) and
``acp_version``, and absolute paths (metrics ``weights``). ``acp train`` without ``--weights`` initializes
the model from torch's global RNG, which nothing seeds, so the digits scenario trains from initial
weights made here by :func:`write_initial_weights` (a torch.Generator seeded with 0, over the model's
state-dict layout stored in digits.json; the recorder reads the layout off a throw-away 1-epoch
``acp train``).

Floats are written by :mod:`json` (``repr``: round-trips exactly) and compared exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECORDED_COMMIT = "the commit in each file's recorded field"
GOLDEN_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the repository
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROCESS_TIMEOUT = 900  # seconds per command: a hang fails instead of blocking
SCENARIOS = ("digits", "resnet20", "demo")

HISTORY_FIELDS = ("iteration", "particle", "widths", "score", "accuracy", "loss", "macs", "params", "status")
FINALIST_FIELDS = ("widths", "proxy_score", "score", "accuracy", "loss", "macs", "params", "status")
VOLATILE_PROVENANCE = ("created", "acp_version")
EPOCH_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
TRAIN_METRICS_FIELDS = ("schedule", "final", "best_val_accuracy")
FINETUNE_METRICS_FIELDS = (
    *TRAIN_METRICS_FIELDS,
    "base_val_accuracy",
    "base_val_loss",
    "val_accuracy_before",
    "val_loss_before",
    "val_accuracy_after",
    "val_loss_after",
    "base_macs",
    "macs",
    "macs_ratio",
    "base_params",
    "params",
    "params_ratio",
    "validation_images",
    "split",
    "data",
    "distill",
    "epochs_trained",
)

# TINY_SEARCH_CONFIG of tests/conftest.py, on the base model trained here and with its split.
DIGITS_CONFIG = """
[model]
name = "resnet8_cifar"
num_classes = 10
weights = "base/weights.pt"
input_size = [3, 16, 16]

[data]
spec = "digits:16"
split = "random:0.2"
seed = 0

[budget]
flops = 0.5

[search]
particles = 3
iterations = 2
random_particles = 1

[proxy]
calibration_batches = 2
calibration_batch_size = 32
validation_images = 200
"""

DIGITS_TRAIN = (
    "train --model resnet8_cifar --data digits:16 --epochs 2 --out base --split random:0.2 --seed 0 "
    "--no-augment --batch-size 32 --weights init.pt --quiet"
)
DIGITS_SEARCH = "search search.toml --out run --quiet"
DIGITS_FINETUNE = "finetune run/best_arch.json --epochs 1 --batch-size 32 --out ft --quiet"

RESNET20_CONFIG = """
[model]
name = "resnet20_cifar"
num_classes = 10
weights = {weights}

[data]
spec = {data}
split = "shared"
seed = 0

[budget]
flops = 0.5

[search]
particles = 2
iterations = 1
random_particles = 0

[proxy]
calibration_batches = 2
calibration_batch_size = 64
validation_images = 500
"""
RESNET20_SEARCH = "search r20.toml --out run --quiet"

DEMO = "demo --quick --out demo --quiet"


# ------------------------------------------------------------------------------------- running acp


def acp_env(cache_dir: str | os.PathLike, python_path: str | os.PathLike | None = None) -> dict[str, str]:
    """The parent's environment plus the pinned thread counts, the image cache and (optionally) the code
    to run first on PYTHONPATH."""
    env = {**os.environ, **THREAD_ENV, "ACP_CACHE_DIR": str(cache_dir)}
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(python_path), os.environ.get("PYTHONPATH", "")) if part
        )
    return env


def run_acp(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m acp COMMAND`` in ``cwd``; raises with the command's stderr if it does not exit 0."""
    argv = [sys.executable, "-m", "acp", *shlex.split(command)]
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`acp {command}` (in {cwd}) exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def acp_location(env: dict[str, str]) -> str:
    """Where the subprocesses import acp from."""
    code = "import importlib.util; print(importlib.util.find_spec('acp').origin)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout.strip()


# ------------------------------------------------------------------------------------- extraction


def tensors_sha256(path: str | os.PathLike) -> str:
    """sha256 over a state_dict file's tensors in sorted key order: name, dtype, shape, then the bytes (in
    standard contiguous layout, so a channels_last copy hashes the same)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def state_dict_layout(path: str | os.PathLike) -> list[list]:
    """``[name, shape, dtype]`` of every entry of a state_dict file, in its order."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return [
        [name, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")] for name, tensor in state.items()
    ]


def write_initial_weights(layout: list[list], path: str | os.PathLike) -> str:
    """Deterministic initial weights for ``layout``: He-normal convolutions, uniform(+-1/sqrt(fan_in))
    linear weights, batch norms at weight 1 / bias 0 / mean 0 / var 1, zero biases and counters, all
    drawn in layout order from ``torch.Generator().manual_seed(0)``. Returns :func:`tensors_sha256`."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape, dtype in layout:
        shape = tuple(shape)
        if dtype != "float32":
            tensor = torch.zeros(shape, dtype=getattr(torch, dtype))
        elif name.endswith(("bias", "running_mean")):
            tensor = torch.zeros(shape)
        elif name.endswith("running_var") or len(shape) == 1:
            tensor = torch.ones(shape)
        else:
            fan_in = math.prod(shape[1:])
            if len(shape) == 4:
                tensor = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
            else:
                tensor = (torch.rand(shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        state[name] = tensor
    torch.save(state, path)
    return tensors_sha256(path)


def history_rows(path: str | os.PathLike, table: str = "evaluations") -> list[dict]:
    """The deterministic columns of every row of a search's history.sqlite (the ``evaluations`` or the
    ``finalists`` table), in insertion order."""
    fields = HISTORY_FIELDS if table == "evaluations" else FINALIST_FIELDS
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = connection.execute(f"SELECT {', '.join(fields)} FROM {table} ORDER BY id")
        rows = [dict(zip(fields, values, strict=True)) for values in cursor]
    finally:
        connection.close()
    for row in rows:
        row["widths"] = json.loads(row["widths"])
    return rows


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def architecture(path: str | os.PathLike) -> dict:
    """An architecture file without its volatile provenance fields."""
    document = read_json(path)
    for key in VOLATILE_PROVENANCE:
        document["provenance"].pop(key)
    return document


def _epochs(metrics: dict) -> list[dict]:
    return [{key: epoch[key] for key in EPOCH_FIELDS} for epoch in metrics["epochs"]]


def train_metrics(path: str | os.PathLike) -> dict:
    """The deterministic fields of ``acp train``'s metrics.json (no seconds)."""
    metrics = read_json(path)
    return {**{key: metrics[key] for key in TRAIN_METRICS_FIELDS}, "epochs": _epochs(metrics)}


def finetune_metrics(path: str | os.PathLike) -> dict:
    """The deterministic fields of a finetune's metrics.json (no seconds, latency or absolute paths)."""
    metrics = read_json(path)
    return {**{key: metrics[key] for key in FINETUNE_METRICS_FIELDS}, "epochs": _epochs(metrics)}


def normalized(value):
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, allow_nan=False))


def differences(expected, actual, path: str = "") -> list[str]:
    """Every place where ``actual`` differs from ``expected``: values exactly (floats bit for bit) and types
    (1 is not 1.0, True is not 1)."""
    where = path or "<top>"
    if type(expected) is not type(actual):
        return [
            f"{where}: expected {expected!r} ({type(expected).__name__}), got {actual!r} "
            f"({type(actual).__name__})"
        ]
    if isinstance(expected, dict):
        found = []
        for key in expected.keys() - actual.keys():
            found.append(f"{path}.{key}: missing")
        for key in actual.keys() - expected.keys():
            found.append(f"{path}.{key}: not expected (value {actual[key]!r})")
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{path}.{key}")
        return sorted(found)
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{where}: expected {len(expected)} items, got {len(actual)}: {actual!r}"]
        found = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found += differences(want, got, f"{path}[{index}]")
        return found
    if isinstance(expected, float) and math.isnan(expected) and math.isnan(actual):
        return []
    if expected != actual:
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


# ------------------------------------------------------------------------------------- scenarios


def digits_layout(work: Path, env: dict[str, str]) -> list[list]:
    """ResNet-8's state-dict layout, read off a throw-away 1-epoch ``acp train`` (recording only)."""
    run_acp(
        "train --model resnet8_cifar --data digits:16 --epochs 1 --out layout --split random:0.2 "
        "--no-augment --batch-size 64 --quiet",
        work,
        env,
    )
    return state_dict_layout(work / "layout" / "weights.pt")


def run_digits(work: Path, env: dict[str, str], layout: list[list]) -> dict:
    """train -> search -> finetune on digits in ``work``; returns ``{"inputs": ..., "outputs": ...}``."""
    init_sha256 = write_initial_weights(layout, work / "init.pt")
    run_acp(DIGITS_TRAIN, work, env)
    (work / "search.toml").write_text(DIGITS_CONFIG, encoding="utf-8")
    run_acp(DIGITS_SEARCH, work, env)
    run_acp(DIGITS_FINETUNE, work, env)
    return {
        "inputs": {"init_layout": layout, "init_weights_sha256": init_sha256},
        "outputs": normalized(
            {
                "base_weights_sha256": tensors_sha256(work / "base" / "weights.pt"),
                "base_metrics": train_metrics(work / "base" / "metrics.json"),
                "base_data": read_json(work / "base" / "data.json"),
                "history": history_rows(work / "run" / "history.sqlite"),
                "finalists": history_rows(work / "run" / "history.sqlite", "finalists"),
                "best_arch": architecture(work / "run" / "best_arch.json"),
                "proposal": read_json(work / "run" / "proposal.json"),
                "finetune_metrics": finetune_metrics(work / "ft" / "metrics.json"),
                "finetune_weights_sha256": tensors_sha256(work / "ft" / "weights.pt"),
            }
        ),
    }


def resnet20_config(shared: Path) -> str:
    weights = shared / "models" / "resnet20_cifar10.pt"
    data = shared / "data" / "cifar10" / "train"
    return RESNET20_CONFIG.format(weights=json.dumps(str(weights)), data=json.dumps(str(data)))


def run_resnet20(work: Path, env: dict[str, str], shared: Path) -> dict:
    """A one-iteration search on the shared ResNet-20 and CIFAR-10 in ``work``."""
    (work / "r20.toml").write_text(resnet20_config(shared), encoding="utf-8")
    run_acp(RESNET20_SEARCH, work, env)
    return {
        "outputs": normalized(
            {
                "history": history_rows(work / "run" / "history.sqlite"),
                "finalists": history_rows(work / "run" / "history.sqlite", "finalists"),
                "best_arch": architecture(work / "run" / "best_arch.json"),
            }
        )
    }


def run_demo(work: Path, env: dict[str, str]) -> dict:
    """``acp demo --quick`` in ``work``."""
    run_acp(DEMO, work, env)
    out = work / "demo"
    return {
        "outputs": normalized(
            {
                "best_arch": architecture(out / "search" / "best_arch.json"),
                "history": history_rows(out / "search" / "history.sqlite"),
                "finalists": history_rows(out / "search" / "history.sqlite", "finalists"),
                "pruned_metrics": finetune_metrics(out / "pruned" / "metrics.json"),
            }
        )
    }


COMMANDS = {
    "digits": [f"acp {DIGITS_TRAIN}", f"acp {DIGITS_SEARCH}", f"acp {DIGITS_FINETUNE}"],
    "resnet20": [f"acp {RESNET20_SEARCH}"],
    "demo": [f"acp {DEMO}"],
}


CPUINFO_FIELDS = ("vendor_id", "cpu family", "model", "flags", "Features")
SIMD_FLAG_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "neon", "asimd", "sve")


def cpu_kind() -> str:
    """The kind of CPU floating point depends on: vendor, family, model and SIMD flags (Linux's
    /proc/cpuinfo; elsewhere the platform's processor string), as ``name/hash`` (the hash of the flags)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in CPUINFO_FIELDS and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    flags = sorted(
        flag for flag in (fields.get("flags") or fields.get("Features") or "").split()
        if flag.startswith(SIMD_FLAG_PREFIXES)
    )  # fmt: skip
    name = " ".join(fields[key] for key in ("vendor_id", "cpu family", "model") if key in fields)
    name = f"{platform.machine()} {name or platform.processor()}".strip()
    digest = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    return f"{name} / simd {digest}"


def golden_path(scenario: str) -> Path:
    return GOLDEN_DIR / f"{scenario}.json"


def load_golden(scenario: str) -> dict:
    return read_json(golden_path(scenario))


def dumps(value, indent: str = "") -> str:
    """Indented JSON with lists of plain values on one line (floats as :mod:`json` writes them: repr)."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(key))}: {dumps(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        return "[\n" + ",\n".join(f"{inner}{dumps(item, inner)}" for item in value) + f"\n{indent}]"
    return json.dumps(value, allow_nan=False)


# ------------------------------------------------------------------------------------- recording


def _versions() -> dict:
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for package in ("torch", "torchvision", "torch-pruning", "numpy", "pyswarms", "scikit-learn", "scipy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def _commit(python_path: str | None) -> str | None:
    where = python_path or str(GOLDEN_DIR)
    try:
        result = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def record(scenario: str, work: Path, env: dict[str, str], shared: Path, *, check: bool = False) -> dict:
    if scenario == "digits":
        if check:  # the test's way: the layout stored in the golden file
            return run_digits(work, env, load_golden("digits")["inputs"]["init_layout"])
        return run_digits(work, env, digits_layout(work / "bootstrap", env))
    if scenario == "resnet20":
        if not (shared / "models" / "resnet20_cifar10.pt").is_file():
            raise SystemExit(f"record.py: {shared} has no models/resnet20_cifar10.pt (give --shared DIR)")
        return run_resnet20(work, env, shared)
    return run_demo(work, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-path", help="run the acp code in this directory (put first on PYTHONPATH)")
    parser.add_argument("--shared", default=str(DEFAULT_SHARED), help="the shared folder (models, data)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--check", action="store_true", help="compare with the golden files, write nothing")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--cache-dir", help="ACP_CACHE_DIR for the commands (default: a fresh one)")
    args = parser.parse_args(argv)

    work_root = Path(tempfile.mkdtemp(prefix="acp-golden-"))
    env = acp_env(args.cache_dir or work_root / "acp-cache", args.python_path)
    location = acp_location(env)
    print(f"acp code: {location}")
    if args.python_path and not Path(location).resolve().is_relative_to(Path(args.python_path).resolve()):
        raise SystemExit(f"record.py: the subprocesses import acp from {location}, not {args.python_path}")
    commit = _commit(args.python_path)
    failed = False
    for scenario in args.only:
        work = work_root / scenario
        (work / "bootstrap").mkdir(parents=True)
        started = time.monotonic()
        result = record(scenario, work, env, Path(args.shared), check=args.check)
        seconds = time.monotonic() - started
        print(f"{scenario}: {seconds:.1f} s")
        if args.check:
            found = differences(load_golden(scenario)["outputs"], result["outputs"])
            failed |= bool(found)
            print("\n".join(f"  {line}" for line in found) or "  same as the golden file")
            continue
        document = {
            "scenario": scenario,
            "recorded": {"commit": commit, "acp_code": location, "cpu": cpu_kind(), **_versions()},
            "commands": COMMANDS[scenario],
            **result,
        }
        golden_path(scenario).write_text(dumps(document) + "\n", encoding="utf-8")
        print(f"  wrote {golden_path(scenario)}")
    if args.keep:
        print(f"work directory: {work_root}")
    else:
        import shutil

        shutil.rmtree(work_root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
