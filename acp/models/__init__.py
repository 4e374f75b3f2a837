"""Model zoo and registry. ``create_model`` is the one entry point."""

from acp.models.cifar_resnet import CifarResNet, resnet_cifar
from acp.models.mobilenetv2_cifar import mobilenetv2_cifar
from acp.models.registry import (
    ACP_MODELS,
    ModelCard,
    available_models,
    check_model_name,
    create_model,
    default_input_size,
    model_card,
)
from acp.models.vgg_cifar import VGGCifar

__all__ = [
    "ACP_MODELS",
    "CifarResNet",
    "ModelCard",
    "VGGCifar",
    "available_models",
    "check_model_name",
    "create_model",
    "default_input_size",
    "mobilenetv2_cifar",
    "model_card",
    "resnet_cifar",
]
