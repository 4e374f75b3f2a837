"""MobileNetV2 for 32x32 inputs: torchvision's implementation with the early strides removed.

The stem conv and the second stage (t=6, c=24) use stride 1 instead of 2, so a 32x32 image reaches the
last stage at 4x4 instead of 1x1 (the usual CIFAR adaptation). Module names are torchvision's.
"""

from __future__ import annotations

from torchvision.models.mobilenetv2 import MobileNetV2

CIFAR_INVERTED_RESIDUALS = [
    # expansion t, channels c, repeats n, stride s
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def mobilenetv2_cifar(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    model = MobileNetV2(
        num_classes=num_classes,
        width_mult=width_mult,
        inverted_residual_setting=CIFAR_INVERTED_RESIDUALS,
        dropout=dropout,
    )
    model.features[0][0].stride = (1, 1)
    return model
