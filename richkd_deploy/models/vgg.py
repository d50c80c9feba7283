"""CIFAR VGG with batch norm (the RepDistiller/mdistiller `vgg*_bn` variants).

Each of the five blocks is a Sequential of conv(bias)-BN-ReLU triplets without its
final ReLU, so the checkpoint keys read `block{i}.{0,3,6,9}` (conv) and
`block{i}.{1,4,7,10}` (BN); the model applies that ReLU itself.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from richkd_deploy.models.base import CifarClassifier, init_weights
from richkd_deploy.models.registry import register_model

_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(CifarClassifier):
    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100) -> None:
        super().__init__()
        ins = (3, *(widths[-1] for widths in cfg[:-1]))
        blocks = [_block(cin, widths) for cin, widths in zip(ins, cfg, strict=True)]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        cin = cfg[-1][-1]
        self.classifier = nn.Linear(cin, num_classes)
        self.num_features = cin
        self.num_classes = num_classes
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        # The reference applies a fourth max-pool only to 64x64 inputs (TinyImageNet);
        # at trace time this is a constant per input size, which export fixes anyway.
        pool3 = x.shape[2] == 64
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if pool3:
            x = F.max_pool2d(x, 2)
        return F.relu(self.block4(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier


@register_model(aliases=("vgg8_bn",))
def vgg8(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg8"], num_classes)


@register_model(aliases=("vgg11_bn",))
def vgg11(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg11"], num_classes)


@register_model(aliases=("vgg13_bn",))
def vgg13(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg13"], num_classes)


@register_model(aliases=("vgg16_bn",))
def vgg16(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg16"], num_classes)


@register_model(aliases=("vgg19_bn",))
def vgg19(num_classes: int = 100) -> VGG:
    return VGG(_CFGS["vgg19"], num_classes)
