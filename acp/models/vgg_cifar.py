"""VGG-16-BN for CIFAR, the variant used by HRank and ABCPruner.

13 conv3x3 + BN + ReLU layers with max pooling after stages 1-4, a 2x2 average pool to 1x1, and a
512-d classifier (Linear 512->512, BatchNorm1d, ReLU, Linear 512->classes). ~313M MACs at 32x32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)


class VGGCifar(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        config: Sequence[int | str] = VGG16_CONFIG,
        in_channels: int = 3,
        hidden: int = 512,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in config:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [
                nn.Conv2d(channels, int(entry), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(entry)),
                nn.ReLU(inplace=True),
            ]
            channels = int(entry)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(
            OrderedDict(
                linear1=nn.Linear(channels, hidden),
                norm1=nn.BatchNorm1d(hidden),
                relu1=nn.ReLU(inplace=True),
                linear2=nn.Linear(hidden, num_classes),
            )
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
