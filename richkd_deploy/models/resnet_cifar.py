"""CIFAR ResNets (He et al. 2016, the 6n+2 family): resnet8 ... resnet110, resnet8x4/32x4.

Layer names (`conv1`, `layer{1,2,3}.{b}`, `downsample.{0,1}`, `fc`) are those of the
RepDistiller/mdistiller checkpoints, so the public teachers load strictly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from richkd_deploy.models.base import CifarClassifier, init_weights
from richkd_deploy.models.registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block; the stride sits on conv1, the ReLU comes after the add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(CifarClassifier):
    """`widths` = (stem, stage1, stage2, stage3); `depth` = 6n + 2 with n blocks per stage."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin
        self.num_classes = num_classes
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def get_classifier(self) -> nn.Linear:
        return self.fc


_SLIM = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@register_model()
def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _SLIM, num_classes)


@register_model()
def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _SLIM, num_classes)


@register_model()
def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _SLIM, num_classes)


@register_model()
def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _SLIM, num_classes)


@register_model()
def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _SLIM, num_classes)


@register_model()
def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _SLIM, num_classes)


@register_model()
def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _SLIM, num_classes)


@register_model()
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _X4, num_classes)


@register_model()
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _X4, num_classes)
