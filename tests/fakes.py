"""The suite's one set of fakes: a small in-memory dataset with the contract CLIP and the
distillers rely on, and a tiny network with the model contract."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
CLASSES = ["aquarium_fish", "cat", "maple_tree", "pickup_truck", "dog", "ship"]


class FakeDataset(torch.utils.data.Dataset):
    """The dataset contract CLIP relies on: items (tensor, label, index), `.images` uint8 NHWC,
    `.raw(i)` PIL RGB, `.classes`, `.labels`, `.name`."""

    def __init__(self, n: int = 24, size: int = 32, num_classes: int = 4, seed: int = 0, name: str = "fake") -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        self.labels = (np.arange(n) % num_classes).astype(np.int64)
        self.classes = CLASSES[:num_classes]
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0
        x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return x, int(self.labels[i]), i


class TinyNet(nn.Module):
    """The model contract: forward -> (logits, pooled features); num_features, num_classes."""

    def __init__(self, width: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)
        self.num_features, self.num_classes = width, num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(f), f
