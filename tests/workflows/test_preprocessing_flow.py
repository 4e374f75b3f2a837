"""The pruned model carries its preprocessing (issue 16 item 3): search -> best_arch.json -> finetune /
prune folder -> acp.load_pruned -> ONNX metadata, and acp eval / finetune normalize with what it carries.

Each of these fails on the code before the record existed (no ``preprocessing`` anywhere but base/data.json).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SEARCH_CONFIG

from acp.cli import main
from acp.core.architecture import Architecture, ModelIdentity
from acp.core.preprocessing import Preprocessing
from acp.data import load_data, make_splits
from acp.models import create_model
from acp.prune import build_space, load_pruned, materialize, save_pruned
from acp.settings import Schedule
from acp.testing import random_architecture
from acp.train.loop import evaluate as evaluate_model
from acp.workflows.evaluate import evaluate
from acp.workflows.finetune import finetune

DIGITS = "digits:16"
IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})
# a normalization unlike the digits' own statistics, so using the wrong one shows in the numbers
CARRIED = Preprocessing((0.2, 0.3, 0.4), (0.5, 0.6, 0.7), (3, 16, 16), tuple(str(d) for d in range(10)))


@pytest.fixture(scope="module")
def digits():
    return load_data(DIGITS)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished tiny search on digits:16 and its 1-epoch finetune, through the CLI."""
    root = tmp_path_factory.mktemp("prep")
    torch.manual_seed(0)
    torch.save(create_model("resnet8_cifar", num_classes=10).state_dict(), root / "weights.pt")
    (root / "space.toml").write_text(TINY_SEARCH_CONFIG, encoding="utf-8")
    assert main(["search", str(root / "space.toml"), "--out", str(root / "run"), "--quiet"]) == 0
    arch = str(root / "run" / "best_arch.json")
    flags = ["--epochs", "1", "--batch-size", "32", "--out", str(root / "ft"), "--quiet"]
    assert main(["finetune", arch, *flags]) == 0
    return root


def test_the_search_and_the_finetune_record_the_datas_preprocessing(searched, digits):
    expected = Preprocessing.of_data(digits)
    assert expected.mean == tuple(digits.mean) and expected.class_names == tuple(digits.classes)
    best = json.loads((searched / "run" / "best_arch.json").read_text())
    assert best["preprocessing"] == expected.to_dict()
    assert Architecture.load(searched / "ft" / "arch.json").preprocessing == expected
    assert load_pruned(searched / "ft").preprocessing == expected


def test_acp_cluster_records_the_preprocessing(searched, digits, capsys):
    out = searched / "cluster.json"
    assert main(["cluster", str(searched / "space.toml"), "--out", str(out), "--images", "64"]) == 0
    assert Architecture.load(out).preprocessing == Preprocessing.of_data(digits)


def test_the_readme_snippets_predict_with_the_carried_preprocessing(searched, digits, capsys):
    """What the README shows: load, prepare an image with the carried numbers, predict; and the same
    with onnxruntime and the ONNX file's metadata alone."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    image_path = searched / "digit.png"
    Image.fromarray(digits.images[7]).save(image_path)
    onnx_path = searched / "model.onnx"
    assert main(["export", str(searched / "ft"), "--onnx", str(onnx_path)]) == 0
    assert "acp.mean, acp.std" in capsys.readouterr().out

    import acp

    model = acp.load_pruned(searched / "ft").eval()
    x = torch.from_numpy(model.preprocessing.model_input(Image.open(image_path)))
    label = model.preprocessing.class_names[model(x).argmax()]

    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path))
    meta = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    channels, height, width = meta["acp.input_size"]
    pixels = np.asarray(Image.open(image_path).convert("RGB").resize((width, height)), np.float32) / 255
    onnx_x = ((pixels - meta["acp.mean"]) / meta["acp.std"]).transpose(2, 0, 1)[None].astype(np.float32)
    onnx_label = meta["acp.class_names"][session.run(None, {"input": onnx_x})[0].argmax()]

    np.testing.assert_allclose(onnx_x, x.numpy(), rtol=1e-6, atol=1e-6)
    expected_x, _ = digits.tensors(np.array([7]))
    assert torch.allclose(x, expected_x, atol=1e-6)  # exactly what training fed the model
    assert label == onnx_label


@pytest.fixture(scope="module")
def pruned_dirs(tmp_path_factory):
    """A pruned resnet8 (random weights, non-trivial BN statistics) saved with and without a record."""
    root = tmp_path_factory.mktemp("carried")
    base, space = build_space(IDENTITY)
    torch.manual_seed(0)
    for module in base.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.save(base.state_dict(), root / "base.pt")
    arch = random_architecture(space, IDENTITY, np.random.default_rng(3))
    pruned = materialize(base, arch, space)
    with_record = save_pruned(pruned, arch.with_preprocessing(CARRIED), root / "with")
    without = save_pruned(pruned, arch, root / "without")
    return root, with_record, without


def _loss(model, data) -> float:
    with torch.no_grad():
        return evaluate_model(model.eval(), data, np.arange(len(data)))[1]


def test_eval_normalizes_with_the_carried_preprocessing(pruned_dirs, digits):
    _, with_record, without = pruned_dirs
    model = load_pruned(with_record)
    carried_loss = _loss(model, digits.with_normalization(CARRIED.mean, CARRIED.std))
    own_loss = _loss(model, digits)
    assert carried_loss != pytest.approx(own_loss)  # the test can tell the two apart
    assert evaluate(with_record, data=DIGITS, split="all").loss == pytest.approx(carried_loss, rel=1e-6)
    # an architecture without a record is evaluated as before: with the images' own statistics
    assert evaluate(without, data=DIGITS, split="all").loss == pytest.approx(own_loss, rel=1e-6)


def test_finetune_trains_with_the_carried_normalization_and_records_it(pruned_dirs, digits, tmp_path):
    root, with_record, without = pruned_dirs
    options = {
        "weights": root / "base.pt",
        "data": DIGITS,
        "training_schedule": Schedule(epochs=1, batch_size=64, lr=0.01, augment=False),
        "progress": False,
        "measure_latency_of_models": False,
    }
    tuned = finetune(with_record / "arch.json", out_dir=tmp_path / "a", **options)
    assert Architecture.load(tmp_path / "a" / "arch.json").preprocessing == CARRIED
    assert tuned.arch.preprocessing == CARRIED
    base = create_model("resnet8_cifar", num_classes=10)
    base.load_state_dict(torch.load(root / "base.pt", weights_only=True))
    splits = make_splits(digits, "auto")
    carried_data = digits.with_normalization(CARRIED.mean, CARRIED.std)
    with torch.no_grad():
        expected = evaluate_model(base.eval(), carried_data, splits.val)[1]
    assert tuned.metrics["base_val_loss"] == pytest.approx(expected, rel=1e-6)

    finetune(without / "arch.json", out_dir=tmp_path / "b", **options)
    assert load_pruned(tmp_path / "b").preprocessing == Preprocessing.of_data(digits)
