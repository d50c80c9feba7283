"""TorchRuntime on the CPU runs big batches in small forward passes (an eager forward
allocates every activation afresh; a 256-image batch at 128 px mapped and faulted
hundreds of MB per layer), with the same logits as one pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from richkd_deploy.runtime import TorchRuntime, predict_all


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return self.net(x)


def test_cpu_batches_are_split_by_pixels_with_identical_logits() -> None:
    model = _Recorder().eval()
    rt = TorchRuntime(model)
    x = np.random.default_rng(0).standard_normal((40, 3, 128, 128)).astype(np.float32)
    got = predict_all(rt, x, batch_size=256)
    assert max(model.sizes) == TorchRuntime.CPU_CHUNK_PIXELS // (128 * 128) == 32 and sum(model.sizes) == 40
    with torch.inference_mode():
        whole = model.net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    model.sizes.clear()
    predict_all(rt, x[:, :, :32, :32].copy(), batch_size=256)
    assert model.sizes == [40]  # 32-px images: one pass, as before


def test_a_loaded_checkpoint_runs_in_channels_last_with_the_same_logits(tmp_path) -> None:
    from richkd_deploy.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=5).eval()
    save_checkpoint({"arch": "resnet8", "num_classes": 5, "model": model.state_dict()}, tmp_path / "t.pt")
    rt = TorchRuntime(tmp_path / "t.pt")
    convs = [m.weight for m in rt.model.modules() if isinstance(m, nn.Conv2d)]
    assert rt.channels_last and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(predict_all(rt, x, batch_size=8), expected, rtol=1e-4, atol=1e-4)
    caller = create_model("resnet8", num_classes=5).eval()
    assert not TorchRuntime(caller).channels_last  # a caller's module is left as it was
    assert all(m.weight.is_contiguous() for m in caller.modules() if isinstance(m, nn.Conv2d))
