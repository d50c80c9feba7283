"""optim.channels_last and optim.compile reach the model and the step."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from richkd_deploy.models import create_model
from richkd_deploy.recipe import OptimConfig
from richkd_deploy.train import loop


def _stage(module):
    return SimpleNamespace(name="student", compute=module)


def test_channels_last_converts_the_weights_not_only_the_inputs():
    model = create_model("resnet8", num_classes=10)
    loop._to_channels_last(_stage(model), OptimConfig(channels_last=True))
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # really NHWC now, not 1x1 kernels that are both


def test_compile_wraps_the_step_and_says_so(monkeypatch):
    compiled, said = [], []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or ("compiled", fn))
    model = create_model("resnet8", num_classes=10)
    net = loop._compiled(_stage(model), model, OptimConfig(compile=True), said.append)
    assert net == ("compiled", model) and compiled == [model]
    assert any("optim.compile" in m for m in said)
    # off by default: the same object back, untouched
    assert loop._compiled(_stage(model), model, OptimConfig(), said.append) is model
