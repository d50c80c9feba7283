"""MobileNetV2 for CIFAR at half width (RepDistiller's `mobile_half`: t=6, width 0.5).

Key names follow the checkpoints: `conv1.{0,1}`, `blocks.{stage}.{b}.conv.{0,1,3,4,6,7}`
(the ReLU slots 2 and 5 hold no weights), `conv2.{0,1}`, `classifier.0`. The head
conv stays 1280 wide at width 0.5, as in the reference.
"""

from __future__ import annotations

from torch import Tensor, nn

from richkd_deploy.models.base import CifarClassifier, init_weights
from richkd_deploy.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when shapes allow.

    The expansion conv is kept even at t=1, because the checkpoints have it.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(CifarClassifier):
    def __init__(self, expand: int = 6, width: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        # (expansion t, channels c, blocks n, first stride s); the stem has stride 2
        # and only three of the ImageNet model's strides are kept for 32x32 inputs.
        setting = [
            (1, 16, 1, 1),
            (expand, 24, 2, 1),
            (expand, 32, 3, 2),
            (expand, 64, 4, 2),
            (expand, 96, 3, 1),
            (expand, 160, 3, 2),
            (expand, 320, 1, 1),
        ]
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        stages = []
        for t, c, n, s in setting:
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.num_features = last
        self.num_classes = num_classes
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[0]


@register_model(name="MobileNetV2", aliases=("mobilenetv2", "mobile_half", "mobilenet_v2"))
def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(expand=6, width=0.5, num_classes=num_classes)
