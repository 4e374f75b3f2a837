"""Shared fixtures: where ../shared lives, a private image cache, small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI runs hypothesis derandomized (the same examples every run: a red CI means a change broke something);
# developers' runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODELS = SHARED / "models"
SHARED_CIFAR = SHARED / "data" / "cifar10" / "train"


def shared_file(*parts: str) -> Path:
    """A path under ../shared, or skip the test cleanly when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (tests that use ../shared skip without it)")
    return path


@pytest.fixture(autouse=True, scope="session")
def single_thread_torch():
    """Tests use tiny models, which gain nothing from a second thread; one thread also keeps them fast on
    a busy machine, where OpenMP's waiting threads slow small kernels down tenfold."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-image cache of every test out of the user's home directory."""
    monkeypatch.setenv("ACP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "acp-cache"))


def write_image_folder(root: Path, per_class: int = 6, size: int = 8, classes=("a", "b", "c"), seed: int = 0):
    """A tiny ImageFolder tree of PNGs with known pixels; returns the uint8 array in sorted order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = []
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:04d}.png")
            arrays.append(pixels)
    return np.stack(arrays)


# A search small enough for tests: ResNet-8 on 16x16 digits, 3 particles x 2 iterations, tiny proxy slices.
TINY_SEARCH_CONFIG = """
[model]
name = "resnet8_cifar"
num_classes = 10
weights = "weights.pt"
input_size = [3, 16, 16]

[data]
spec = "digits:16"

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

[rerank]
finetune_steps = 10
"""
