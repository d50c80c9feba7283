"""Strict loading, safe reading and atomic writing of checkpoints."""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from richkd_deploy.errors import CheckpointError, RichKDError
from richkd_deploy.models import checkpoint as ckpt_mod
from richkd_deploy.models import create_model, load_checkpoint, load_state_dict_strict, save_checkpoint

# ---------------------------------------------------------------- strict loading


def _source_state(num_classes: int = 100) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(1)
    return create_model("resnet8", num_classes=num_classes).state_dict()


def _assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_loads_raw_and_wrapped_state_dicts() -> None:
    state = _source_state()
    for wrapped in (state, {"model": state, "epoch": 240, "accuracy": 72.3}, {"state_dict": state}):
        model = create_model("resnet8")
        assert load_state_dict_strict(model, wrapped, source="t.pth") is model
        _assert_same_weights(model, state)


def test_strips_module_prefix() -> None:
    state = _source_state()
    model = create_model("resnet8")
    load_state_dict_strict(model, {f"module.{k}": v for k, v in state.items()}, source="ddp.pth")
    _assert_same_weights(model, state)


def test_missing_num_batches_tracked_is_filled_in() -> None:
    state = _source_state()
    old_format = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old_format) < len(state)
    model = create_model("resnet8")
    load_state_dict_strict(model, old_format, source="old.pth")
    assert int(model.bn1.num_batches_tracked) == 0
    _assert_same_weights(model, old_format | {k: model.state_dict()[k] for k in state if k not in old_format})


def test_missing_keys_are_an_error() -> None:
    state = _source_state()
    del state["layer1.0.conv1.weight"], state["layer1.0.bn1.weight"], state["fc.bias"], state["fc.weight"]
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(create_model("resnet8"), state, source="part.pth")
    msg = str(info.value)
    assert msg.startswith("checkpoint part.pth does not fit resnet8 with 100 classes: 4 missing keys (")
    assert "layer1.0.conv1.weight" in msg and ", ...)" in msg
    assert msg.endswith("check teacher.arch / data.dataset") and "\n" not in msg


def test_unexpected_keys_are_an_error() -> None:
    state = _source_state() | {"head.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"1 unexpected key \(head\.weight\)"):
        load_state_dict_strict(create_model("resnet8"), state, source="extra.pth")


def test_other_class_count_is_an_error() -> None:
    state = _source_state(num_classes=100)
    model = create_model("resnet8", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, state, source="c100.pth")
    msg = str(info.value)
    assert "does not fit resnet8 with 10 classes" in msg
    assert "fc.weight has shape [100, 64] but the model expects [10, 64]" in msg
    assert "fc.bias has shape [100] but the model expects [10]" in msg
    assert "the checkpoint was trained for 100 classes" in msg
    _assert_same_weights(model, before)  # nothing was half-loaded


def test_another_architecture_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="does not fit wrn_16_1"):
        load_state_dict_strict(create_model("wrn_16_1"), _source_state(), source="r8.pth", hint="x")


def test_not_a_state_dict() -> None:
    with pytest.raises(CheckpointError, match="holds no state dict.*epoch"):
        load_state_dict_strict(create_model("resnet8"), {"epoch": 3, "optimizer": {}}, source="o.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict_strict(create_model("resnet8"), [1, 2], source="l.pth")  # type: ignore[arg-type]


# ---------------------------------------------------------------- safe reading


def test_round_trip(tmp_path: Path) -> None:
    state = _source_state()
    path = save_checkpoint({"model": state, "epoch": 240}, tmp_path / "sub" / "ckpt.pth")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 240
    model = create_model("resnet8")
    load_state_dict_strict(model, loaded, source=str(path))
    _assert_same_weights(model, state)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]


class _Payload:
    """Unpickling this creates `marker`: stands in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _source_state(), "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "refused" in msg and "could run code" in msg and "\n" not in msg
    assert "it refers to io.open" in msg  # names what it refused (builtins.open is io.open)
    assert not marker.exists()
    # Proof the payload is live: an unsafe load does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_corrupt_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad.pth"
    if damage == "truncated":
        save_checkpoint({"model": _source_state()}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(random.Random(damage).randbytes(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"bad\.pth") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth not found"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_non_dict_checkpoint(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "t.pth")


# ---------------------------------------------------------------- atomic writing


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    old = path.read_bytes()

    def disk_full(obj: object, f) -> None:  # noqa: ANN001
        f.write(b"partial data")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"epoch": 2}, path)
    msg = str(info.value)
    assert str(path) in msg and "No space left on device" in msg
    assert isinstance(info.value, RichKDError)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_non_os_errors_propagate_unchanged(tmp_path: Path) -> None:
    """Pickling something unpicklable is a bug, not a user error: keep its type."""
    with pytest.raises(Exception) as info:  # noqa: B017 -- the type is whatever pickle raises
        save_checkpoint({"f": lambda: 0}, tmp_path / "x.pt")
    assert not isinstance(info.value, CheckpointError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="needs resource.RLIMIT_FSIZE")
def test_file_size_limit_from_the_kernel(tmp_path: Path) -> None:
    """A real EFBIG, which torch.save itself reports as an opaque RuntimeError.

    Python ignores SIGXFSZ, so with a small RLIMIT_FSIZE the write fails with OSError
    instead of killing the process; the soft limit is restored right after.
    """
    import resource

    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1}, path)
    old = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError) as info:
            save_checkpoint({"w": torch.zeros(1_000_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    msg = str(info.value)
    assert str(path) in msg and "File too large" in msg
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
