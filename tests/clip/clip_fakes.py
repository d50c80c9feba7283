"""A small in-memory dataset with the contract CLIP relies on (a unique module name, so
the tests can import it whatever other conftest.py files pytest loaded)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class FakeDataset(torch.utils.data.Dataset):
    """The dataset contract CLIP relies on: items (tensor, label, index), `.images` uint8 NHWC,
    `.raw(i)` PIL RGB, `.classes`, `.labels`, `.name`."""

    def __init__(self, n: int = 24, size: int = 32, num_classes: int = 4, seed: int = 0, name: str = "fake") -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        self.labels = (np.arange(n) % num_classes).astype(np.int64)
        self.classes = ["aquarium_fish", "cat", "maple_tree", "pickup_truck", "dog", "ship"][:num_classes]
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 255.0
        x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return x, int(self.labels[i]), i
