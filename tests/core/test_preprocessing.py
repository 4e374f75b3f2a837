"""The preprocessing record (issue 16 item 3): a validated value, carried in the Architecture JSON.

Old architecture files (no ``preprocessing`` key) still load; a malformed record is one UserError that
names the file and the field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acp.core.architecture import Architecture, ModelIdentity
from acp.core.preprocessing import Preprocessing
from acp.errors import UserError
from acp.testing import FakeGroup, FakeSpace

IDENTITY = ModelIdentity("fake_net", 3, (3, 8, 8), {})
SPACE = FakeSpace(
    (FakeGroup("conv1", 8, 2, 2), FakeGroup("conv2", 8, 2, 2)), input_shape=(1, 3, 8, 8), num_classes=3
)
RECORD = Preprocessing((0.1, 0.2, 0.3), (0.25, 0.5, 0.125), (3, 8, 8), ("cat", "dog", "eel"))
GOOD = {"mean": [0.1, 0.2, 0.3], "std": [0.25, 0.5, 0.125], "input_size": [3, 8, 8], "class_names": None}


def arch_with(preprocessing=None) -> Architecture:
    keep = {"conv1": [0, 1, 4, 5], "conv2": [1, 3]}
    return Architecture.from_widths(
        SPACE,
        IDENTITY,
        {"conv1": 4, "conv2": 2},
        keep,
        provenance={"created": None},
        preprocessing=preprocessing,
    )


def test_a_record_holds_plain_values_and_round_trips_through_json():
    made = Preprocessing(np.array([0.1, 0.2, 0.3]), [np.float32(0.5)] * 3, [3, 8, 8], ["a", "b", "c"])
    assert made.mean == (0.1, 0.2, 0.3) and all(type(v) is float for v in made.mean + made.std)
    assert made.input_size == (3, 8, 8) and made.class_names == ("a", "b", "c")
    assert Preprocessing.from_dict(json.loads(json.dumps(RECORD.to_dict()))) == RECORD
    assert Preprocessing.from_dict(GOOD).class_names is None
    assert (
        Preprocessing.from_dict({key: GOOD[key] for key in ("mean", "std", "input_size")}).class_names is None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"std": [0.25, 0.5]}, r"f.json: std: expected 3 values \(one per channel\), got 2"),
        ({"mean": [0.1, 0.2, 0.3, 0.4]}, r"f.json: mean: expected 3 values \(one per channel\), got 4"),
        ({"std": [0.25, 0.0, 0.125]}, r"f.json: std\[1\]: 0.0 out of range \(0.0, 1.0\]"),
        ({"std": [0.25, -0.5, 0.125]}, r"f.json: std\[1\]: -0.5 out of range \(0.0, 1.0\]"),
        ({"std": [0.25, "0.5", 0.125]}, r"f.json: std\[1\]: expected a number, got string '0.5'"),
        ({"mean": [0.1, True, 0.3]}, r"f.json: mean\[1\]: expected a number, got boolean True"),
        ({"mean": [0.1, 120.0, 0.3]}, r"f.json: mean\[1\]: 120.0 out of range \[0.0, 1.0\]"),
        ({"mean": 0.5}, "f.json: mean: expected an array of 3 numbers"),
        ({"input_size": [3, 8]}, r"f.json: input_size: expected \[channels, height, width\]"),
        ({"input_size": [3, 0, 8]}, r"f.json: input_size\[1\]: 0 out of range"),
        ({"class_names": ["a", ""]}, r"f.json: class_names\[1\]: expected a non-empty string"),
        ({"class_names": ["a", "a"]}, r"f.json: class_names\[1\]: duplicate class name 'a'"),
        ({"class_names": []}, "f.json: class_names: expected at least one class name"),
        ({"scale": 255}, "f.json: unknown key 'scale'"),
    ],
)
def test_a_malformed_record_names_the_file_and_the_field(change, message):
    with pytest.raises(UserError, match=message):
        Preprocessing.from_dict({**GOOD, **change}, source="f.json")


def test_a_record_cannot_be_constructed_invalid():
    with pytest.raises(UserError, match=r"<preprocessing>: std\[0\]: 0.0 out of range"):
        Preprocessing((0.5,), (0.0,), (1, 4, 4))
    with pytest.raises(UserError, match="mean: expected 3 values"):
        Preprocessing((0.5,), (0.2, 0.2, 0.2), (3, 4, 4))
    missing = {key: value for key, value in GOOD.items() if key != "std"}
    with pytest.raises(UserError, match="f.json: missing key 'std'"):
        Preprocessing.from_dict(missing, source="f.json")


def test_the_architecture_json_carries_the_record(tmp_path):
    arch = arch_with(RECORD)
    path = arch.save(tmp_path / "best_arch.json")
    document = json.loads(path.read_text())
    assert document["preprocessing"] == {
        "mean": [0.1, 0.2, 0.3],
        "std": [0.25, 0.5, 0.125],
        "input_size": [3, 8, 8],
        "class_names": ["cat", "dog", "eel"],
    }
    loaded = Architecture.load(path)
    assert loaded.preprocessing == RECORD and loaded == arch
    assert arch_with(None).with_preprocessing(RECORD) == arch


def test_an_architecture_file_without_a_record_still_loads(tmp_path):
    document = arch_with(RECORD).to_dict()
    del document["preprocessing"]  # as every file written before it was recorded
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    old = Architecture.load(path)
    assert old.preprocessing is None and "preprocessing" not in old.to_dict()
    assert old.with_preprocessing(RECORD).preprocessing == RECORD
    document["preprocessing"] = None
    path.write_text(json.dumps(document))
    assert Architecture.load(path).preprocessing is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"std": [0.25, 0.5]}, "preprocessing.std: expected 3 values"),
        ({"std": [0.25, -0.5, 0.125]}, r"preprocessing.std\[1\]: -0.5 out of range"),
        ({"std": [0.25, 0, 0.125]}, r"preprocessing.std\[1\]: 0 out of range"),
        ({"mean": ["a", 0.2, 0.3]}, r"preprocessing.mean\[0\]: expected a number, got string 'a'"),
        ({"input_size": [3, 16, 16]}, "preprocessing.input_size: .* disagrees with the model's input size"),
        (
            {"class_names": ["cat", "dog"]},
            "preprocessing.class_names: has 2 names but the model has 3 classes",
        ),
    ],
)
def test_a_malformed_record_in_an_architecture_file_is_refused(tmp_path, change, message):
    document = arch_with(RECORD).to_dict()
    document["preprocessing"].update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=f"^{path}: {message}"):
        Architecture.load(path)
    document["preprocessing"] = [0.5, 0.25]
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=f"^{path}: preprocessing: expected an object"):
        Architecture.load(path)


def test_a_record_that_does_not_fit_the_model_is_refused_in_python():
    with pytest.raises(UserError, match="input_size: .* disagrees with the model's input size"):
        arch_with(Preprocessing((0.5,) * 3, (0.2,) * 3, (3, 4, 4)))
    with pytest.raises(UserError, match="expected a Preprocessing"):
        arch_with(None).with_preprocessing({"mean": [0.5] * 3})


def test_model_input_normalizes_as_the_data_layer_does():
    from acp.data import load_data

    data = load_data("digits:8")
    record = Preprocessing.of_data(data)
    assert record.input_size == (3, 8, 8) and record.class_names == tuple(str(d) for d in range(10))
    expected, _ = data.tensors(np.arange(4))
    np.testing.assert_array_equal(record.model_input(data.images[:4]), expected.numpy())
    np.testing.assert_array_equal(record.model_input(data.images[0]), expected[:1].numpy())
    from PIL import Image

    as_image = Image.fromarray(data.images[1])
    np.testing.assert_array_equal(record.model_input(as_image), expected[1:2].numpy())
    assert torch.from_numpy(record.model_input(as_image)).dtype == torch.float32
    with pytest.raises(UserError, match="takes 8x8 images with 3 channels.*resize or crop them first"):
        record.model_input(np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="expected uint8 pixels"):
        record.model_input(data.images[0].astype(np.float32))


def test_onnx_metadata_texts_round_trip():
    props = RECORD.metadata_props()
    assert props == {
        "acp.mean": "[0.1, 0.2, 0.3]",
        "acp.std": "[0.25, 0.5, 0.125]",
        "acp.input_size": "[3, 8, 8]",
        "acp.class_names": '["cat", "dog", "eel"]',
    }
    assert Preprocessing.from_metadata_props(props) == RECORD
    with pytest.raises(UserError, match="m.onnx: no acp.std in the model's metadata"):
        Preprocessing.from_metadata_props({"acp.mean": "[0.1]"}, source="m.onnx")
    with pytest.raises(UserError, match="m.onnx: acp.std: expected JSON text"):
        Preprocessing.from_metadata_props({**props, "acp.std": "[0.2,"}, source="m.onnx")
    with pytest.raises(UserError, match="m.onnx: acp.std: .*NaN is not a JSON number"):
        Preprocessing.from_metadata_props({**props, "acp.std": "[NaN, 0.2, 0.2]"}, source="m.onnx")
