"""Materialization (fast index plan == Torch-Pruning), save/load round trips, ONNX export."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.preprocessing import Preprocessing
from acp.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from acp.errors import UserError
from acp.fileio import atomic_torch_save, load_weights_into
from acp.prune import (
    build_space,
    export_onnx,
    load_pruned,
    materialize,
    materialize_with_torch_pruning,
    save_pruned,
)
from acp.testing import random_architecture

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESNET20_WEIGHTS = SHARED / "models" / "resnet20_cifar10.pt"


@functools.lru_cache(maxsize=4)
def built(name: str, side: int = 32, kwargs: tuple = ()):
    identity = ModelIdentity(name, None, (3, side, side), dict(kwargs))
    model, space = build_space(identity, {})
    return identity, model, space


def arch_for(name: str, seed: int, side: int = 32, kwargs: tuple = ()):
    identity, model, space = built(name, side, kwargs)
    return model, space, random_architecture(space, identity, np.random.default_rng(seed))


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_model(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].shape == state_b[key].shape, key
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.mark.parametrize(
    ("name", "side", "kwargs"),
    [
        ("resnet20_cifar", 32, ()),
        ("mobilenetv2_cifar", 32, ()),
        ("googlenet", 32, (("aux_logits", False), ("init_weights", True))),
    ],
)
def test_fast_materialize_matches_torch_pruning_bitwise(name, side, kwargs):
    model, space, arch = arch_for(name, 3, side, kwargs)
    fast = materialize(model, arch, space)
    reference = materialize_with_torch_pruning(model, arch)
    assert_same_model(fast, reference)
    for module_fast, module_ref in zip(fast.modules(), reference.modules()):
        assert repr(module_fast) == repr(module_ref)  # in/out channels, groups, num_features agree
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    assert torch.equal(outputs(fast, x), outputs(reference, x))


@pytest.mark.slow
def test_fast_materialize_matches_torch_pruning_through_concats():
    model, space, arch = arch_for("densenet121", 5)
    assert_same_model(materialize(model, arch, space), materialize_with_torch_pruning(model, arch))


def test_materialize_is_pure_and_inherits_the_kept_weights():
    model, space, arch = arch_for("resnet20_cifar", 1)
    model.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    pruned = materialize(model, arch, space)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert model.conv1.out_channels == 16 and all(m.training for m in model.modules())
    assert all(m.training for m in pruned.modules())  # keeps the input's mode
    keep = {choice.id: torch.tensor(choice.keep) for choice in arch.groups}
    stem, inner = keep["conv1"], keep["layer1.0.conv1"]
    assert pruned.conv1.weight.shape == (len(stem), 3, 3, 3)
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[stem])
    assert torch.equal(pruned.bn1.running_mean, model.bn1.running_mean[stem])
    assert torch.equal(pruned.layer1[0].conv2.weight, model.layer1[0].conv2.weight[stem][:, inner])
    assert pruned.layer1[0].conv1.out_channels == len(inner) == pruned.layer1[0].bn1.num_features
    assert pruned.fc.in_features == len(keep["layer3.0.conv2"]) and pruned.fc.out_features == 10
    # no tensor is shared with the input model
    originals = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    assert not originals & {t.data_ptr() for t in (*pruned.parameters(), *pruned.buffers())}
    pruned.fc.weight.data.zero_()
    assert torch.equal(before["fc.weight"], model.fc.weight)


def test_full_width_architecture_reproduces_the_model_bitwise():
    identity, model, space = built("resnet20_cifar")
    full = {g.id: g.full_width for g in space.groups}
    keep = {g.id: list(range(g.full_width)) for g in space.groups}
    arch = Architecture.from_widths(
        space, identity, full, keep, provenance={"created": None}, space_settings=space.settings
    )
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(outputs(materialize(model, arch, space), x), outputs(model, x))


def test_materialize_without_a_space_builds_one():
    model, space, arch = arch_for("resnet20_cifar", 2)
    assert_same_model(materialize(model, arch), materialize(model, arch, space))


def test_materialize_rejects_an_architecture_for_another_model():
    _, space, _ = arch_for("resnet20_cifar", 0)
    other_model, _, other_arch = arch_for("mobilenetv2_cifar", 0)
    with pytest.raises(UserError, match="unknown group"):
        materialize(other_model, other_arch, space)


def test_save_and_load_round_trip(tmp_path):
    model, space, arch = arch_for("resnet20_cifar", 4)
    pruned = materialize(model, arch, space)
    torch.nn.init.normal_(pruned.layer2[0].bn1.running_mean)  # state that differs from a fresh build
    directory = save_pruned(pruned, arch, tmp_path / "pruned")
    assert sorted(p.name for p in directory.iterdir()) == ["arch.json", "weights.pt"]
    assert json.loads((directory / "arch.json").read_text())["schema"] == "acp.architecture/1"
    x = torch.randn(3, 3, 32, 32)
    expected = outputs(pruned, x)
    for loaded in (
        load_pruned(directory),
        load_pruned(directory / "arch.json"),
        load_pruned(arch, directory / "weights.pt"),
    ):
        assert torch.equal(outputs(loaded, x), expected)
        macs, params = tp.utils.count_ops_and_params(loaded, torch.zeros(1, 3, 32, 32))
        assert (int(macs), params) == (arch.macs, arch.params)
    # the weights file is a plain state_dict that loads with weights_only=True into any rebuild
    state = torch.load(directory / "weights.pt", weights_only=True)
    assert set(state) == set(pruned.state_dict())


def test_load_errors_name_the_problem(tmp_path):
    model, space, arch = arch_for("resnet20_cifar", 4)
    _, _, other = arch_for("resnet20_cifar", 5)
    directory = save_pruned(materialize(model, arch, space), arch, tmp_path / "a")
    with pytest.raises(UserError, match="weights file required"):
        load_pruned(arch)
    with pytest.raises(UserError, match="does not fit the model: .* has shape"):
        load_pruned(other, directory / "weights.pt")
    lonely = tmp_path / "lonely.json"
    arch.save(lonely)
    with pytest.raises(UserError, match="no weights for .*lonely.json"):
        load_pruned(lonely)
    with pytest.raises(UserError, match="architecture file not found"):
        load_pruned(tmp_path / "missing")
    with pytest.raises(UserError, match="architecture has"):
        save_pruned(model, arch, tmp_path / "b")  # the unpruned model does not fit the architecture


def test_save_load_of_trained_resnet20_is_bitwise(tmp_path):
    if not RESNET20_WEIGHTS.is_file():
        pytest.skip("../shared/models/resnet20_cifar10.pt not available")
    identity, _, space = built("resnet20_cifar")
    model, _ = build_space(ModelIdentity("resnet20_cifar", None, (3, 32, 32), {}), {})
    load_weights_into(model, RESNET20_WEIGHTS)
    arch = random_architecture(space, identity, np.random.default_rng(11))
    pruned = materialize(model, arch, space)
    loaded = load_pruned(save_pruned(pruned, arch, tmp_path / "r20"))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(outputs(loaded, x), outputs(pruned, x))
    assert_same_model(loaded, pruned)


def test_a_pickled_module_is_refused_as_weights(tmp_path):
    model, space, arch = arch_for("resnet20_cifar", 4)
    pruned = materialize(model, arch, space)
    atomic_torch_save(tmp_path / "evil.pt", pruned)  # a whole pickled module, not a state_dict
    with pytest.raises(UserError, match="pickled Python objects"):
        load_pruned(arch, tmp_path / "evil.pt")


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, space, arch = arch_for("mobilenetv2_cifar", 6)
    pruned = materialize(model, arch, space).train()
    path = export_onnx(pruned, (3, 32, 32), tmp_path / "model.onnx")
    assert all(m.training for m in pruned.modules())  # exporting does not switch the caller's model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # batch is dynamic
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, outputs(pruned, x).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="input_shape"):
        export_onnx(pruned, (32, 32), tmp_path / "bad.onnx")


# --- the preprocessing a pruned model carries (issue 16 item 3) -------------------------------------

CIFAR10_RECORD = Preprocessing(CIFAR10_MEAN, CIFAR10_STD, (3, 32, 32), tuple(CIFAR10_CLASSES))


def test_the_preprocessing_survives_save_pruned_and_load_pruned(tmp_path):
    model, space, arch = arch_for("resnet20_cifar", 4)
    arch = arch.with_preprocessing(CIFAR10_RECORD)
    directory = save_pruned(materialize(model, arch, space), arch, tmp_path / "pruned")
    assert json.loads((directory / "arch.json").read_text())["preprocessing"] == {
        "mean": list(CIFAR10_MEAN),
        "std": list(CIFAR10_STD),
        "input_size": [3, 32, 32],
        "class_names": CIFAR10_CLASSES,
    }
    for loaded in (
        load_pruned(directory),
        load_pruned(directory / "arch.json"),
        load_pruned(arch, directory / "weights.pt"),
    ):
        assert loaded.preprocessing == CIFAR10_RECORD
        assert loaded.preprocessing.mean == CIFAR10_MEAN and loaded.preprocessing.std == CIFAR10_STD
    # an architecture written before the record existed loads, and says it has none
    old = save_pruned(materialize(model, arch, space), arch.with_preprocessing(None), tmp_path / "old")
    assert "preprocessing" not in json.loads((old / "arch.json").read_text())
    assert load_pruned(old).preprocessing is None


def test_onnx_export_writes_the_preprocessing_into_its_metadata(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from acp.prune import preprocessing_of_onnx

    model, space, arch = arch_for("resnet20_cifar", 4)
    arch = arch.with_preprocessing(CIFAR10_RECORD)
    directory = save_pruned(materialize(model, arch, space), arch, tmp_path / "pruned")
    loaded = load_pruned(directory).eval()
    path = export_onnx(loaded, (3, 32, 32), tmp_path / "model.onnx")  # the carried record by default
    props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert props == {
        "acp.mean": json.dumps(list(CIFAR10_MEAN)),
        "acp.std": json.dumps(list(CIFAR10_STD)),
        "acp.input_size": "[3, 32, 32]",
        "acp.class_names": json.dumps(CIFAR10_CLASSES),
    }
    assert [json.loads(props[f"acp.{key}"]) for key in ("mean", "std")] == [
        list(CIFAR10_MEAN),
        list(CIFAR10_STD),
    ]
    assert preprocessing_of_onnx(path) == CIFAR10_RECORD
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert Preprocessing.from_metadata_props(session.get_modelmeta().custom_metadata_map) == CIFAR10_RECORD
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    x = CIFAR10_RECORD.model_input(pixels)
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, outputs(loaded, torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)

    bare = export_onnx(materialize(model, arch, space), (3, 32, 32), tmp_path / "bare.onnx")
    assert not [entry.key for entry in onnx.load(str(bare)).metadata_props if entry.key.startswith("acp.")]
    with pytest.raises(UserError, match="no acp.mean in the model's metadata"):
        preprocessing_of_onnx(bare)
    small = Preprocessing(CIFAR10_MEAN, CIFAR10_STD, (3, 16, 16))
    with pytest.raises(UserError, match=r"preprocessing: input size \[3, 16, 16\] disagrees"):
        export_onnx(loaded, (3, 32, 32), tmp_path / "wrong.onnx", preprocessing=small)
    assert not (tmp_path / "wrong.onnx").exists()
