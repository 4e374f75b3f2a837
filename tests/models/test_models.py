from __future__ import annotations

import pytest
import torch
from conftest import shared_file

from acp.errors import UserError
from acp.models import available_models, create_model, default_input_size


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet20_cifar", 272_474),
        ("resnet32_cifar", 466_906),
        ("resnet56_cifar", 855_770),
        ("resnet110_cifar", 1_730_714),
        ("vgg16_bn_cifar", 14_987_722),
        ("mobilenetv2_cifar", 2_236_682),
    ],
)
def test_cifar_models_have_published_sizes_and_output_shape(name, params):
    model = create_model(name, num_classes=10).eval()
    assert count_params(model) == params
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_uses_torchvision_style_names():
    keys = set(create_model("resnet20_cifar").state_dict())
    assert len(keys) == 128
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer3.2.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.running_mean",
        "fc.weight",
    ):
        assert key in keys
    assert not any(k.startswith("layer1.0.downsample") for k in keys)


def test_num_classes_and_in_channels_are_configurable():
    model = create_model("resnet8_cifar", num_classes=7, in_channels=1).eval()
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 7)


def test_vgg_is_the_hrank_variant():
    model = create_model("vgg16_bn_cifar")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert model.classifier.linear1.in_features == 512 and model.classifier.linear1.out_features == 512


def test_mobilenetv2_cifar_keeps_4x4_before_pooling():
    model = create_model("mobilenetv2_cifar").eval()
    assert model.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_torchvision_names_build_without_weights():
    model = create_model("resnet18", num_classes=5)
    assert model.fc.out_features == 5
    assert "resnet18" in available_models()
    assert default_input_size("resnet18") == (3, 224, 224)
    assert default_input_size("resnet20_cifar") == (3, 32, 32)


def test_factory_reference_is_imported_and_called():
    model = create_model("acp.models.cifar_resnet:resnet_cifar", num_classes=3, depth=8)
    assert model.fc.out_features == 3


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("resnet20", "close matches: "),
        ("resnt20_cifar", "resnet20_cifar"),
        ("no_such.module:make", "cannot import 'no_such.module'"),
        ("acp.models.cifar_resnet:missing", "has no callable 'missing'"),
        ("acp.errors:one_line", "bad arguments"),
    ],
)
def test_registry_errors_are_user_errors_naming_the_problem(name, fragment):
    with pytest.raises(UserError, match=None) as caught:
        create_model(name, num_classes=10)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_kwargs_are_a_user_error():
    with pytest.raises(UserError, match="resnet20_cifar"):
        create_model("resnet20_cifar", colour="blue")


def test_shared_resnet20_loads_strictly_and_reproduces_its_validation_accuracy():
    import numpy as np

    from acp.data import CIFAR10_MEAN, CIFAR10_STD, ImageData, decode_images, list_image_folder
    from acp.fileio import load_weights_into
    from acp.train.loop import evaluate

    weights = shared_file("models", "resnet20_cifar10.pt")
    root = shared_file("data", "cifar10", "train")
    model = load_weights_into(create_model("resnet20_cifar"), weights)
    files, labels, classes = list_image_folder(root)
    val = np.concatenate([np.flatnonzero(labels == c)[-500:] for c in range(10)])
    images = decode_images(root, [files[i] for i in val])
    data = ImageData(images, labels[val], classes, str(root), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    accuracy, _ = evaluate(model, data, np.arange(len(val)))
    assert len(val) == 5000
    assert accuracy == pytest.approx(0.8754, abs=0.0005)  # ../shared/models/README.md: 87.54%
