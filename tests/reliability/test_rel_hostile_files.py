"""Issue 7.4: broken and hostile files. Every case must end in one `error:` line on
stderr and exit 2 (never a traceback, never a silently wrong result).

Most cases run in-process through the console entry point (`rel_helpers.invoke`), which
exercises the same error handling as the `richkd-deploy` script at a fraction of a
subprocess's cost; the code-running pickle also goes through a real subprocess."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from richkd_deploy.clip.cache import LOGITS_FILE, validate_clip_cache
from richkd_deploy.errors import ArtifactError
from richkd_deploy.manifest import read_manifest, verify_artifact
from richkd_deploy.models import create_model
from tests.reliability.rel_helpers import (
    TRAIN,
    assert_one_line_error,
    assert_result_error,
    copy_run,
    invoke,
    run_cli,
)
from tests.train.helpers import same_weights


class CodeRunningPickle:
    """Unpickling this runs `touch MARKER` (the classic malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _bad_file(kind: str, good: Path, dest: Path, marker: Path) -> Path:
    """`good` damaged by `kind`, written to `dest`."""
    data = good.read_bytes()
    if kind == "truncated":
        dest.write_bytes(data[: len(data) // 2])
    elif kind == "random-bytes":
        dest.write_bytes(random.Random(kind).randbytes(len(data)))
    elif kind == "code-pickle":
        torch.save({"format": "richkd-deploy/student/1", "model": CodeRunningPickle(marker)}, dest)
    else:
        raise AssertionError(kind)
    return dest


def test_the_code_pickle_really_runs_code_without_weights_only(tmp_path: Path) -> None:
    """Positive control: the payload is live, so its absence of effect below means something."""
    marker = tmp_path / "pwned"
    path = _bad_file("code-pickle", Path(__file__), tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- teacher checkpoint


def _foreign_weights(kind: str, dest: Path) -> Path:
    model = create_model("resnet20", num_classes=10) if kind == "other-arch" else create_model("resnet8", num_classes=100)
    torch.save({"model": model.state_dict()}, dest)
    return dest


TEACHER_CASES = [("truncated", "corrupt or not a PyTorch file"),
                 ("random-bytes", "corrupt or not a PyTorch file"),
                 ("code-pickle", "was refused"),
                 ("other-arch", "does not fit resnet8 with 10 classes"),
                 ("other-classes", "trained for 100 classes")]


@pytest.mark.parametrize("kind, fragment", TEACHER_CASES, ids=[c[0] for c in TEACHER_CASES])
def test_bad_teacher_checkpoint(reference_run: Path, tmp_path: Path, kind: str, fragment: str) -> None:
    marker = tmp_path / "pwned"
    if kind.startswith("other"):
        bad = _foreign_weights(kind, tmp_path / "teacher.pth")
    else:
        bad = _bad_file(kind, reference_run / "teacher" / "teacher.pt", tmp_path / "teacher.pth", marker)
    result = invoke(*TRAIN, "-o", f"teacher.checkpoint={bad}", "--run-dir", str(tmp_path / "run"))
    assert_result_error(result, 2, fragment, str(bad))
    assert not marker.exists()
    assert not (tmp_path / "run" / "student.pt").exists() and not (tmp_path / "run" / ".lock").exists()


def test_code_pickle_teacher_through_the_real_console_script(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = _bad_file("code-pickle", Path(__file__), tmp_path / "teacher.pth", marker)
    out = run_cli(*TRAIN, "-o", f"teacher.checkpoint={bad}", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(out.returncode, out.stderr, 2, "was refused", "posix.system")
    assert not marker.exists()


# ----------------------------------------------------------------------------- student.pt


def _bad_student(kind: str, reference_run: Path, run: Path, marker: Path) -> Path:
    run.mkdir()
    if kind == "no-recipe":
        payload = torch.load(reference_run / "student.pt", map_location="cpu", weights_only=True)
        del payload["recipe"]
        torch.save(payload, run / "student.pt")
    elif kind.startswith("other"):
        payload = torch.load(reference_run / "student.pt", map_location="cpu", weights_only=True)
        model = create_model("resnet20", num_classes=10) if kind == "other-arch" else create_model("resnet8", num_classes=100)
        payload["model"] = model.state_dict()  # still claims resnet8 with 10 classes
        torch.save(payload, run / "student.pt")
    else:
        _bad_file(kind, reference_run / "student.pt", run / "student.pt", marker)
    return run


STUDENT_CASES = [  # (kind, export's message, validate's message): one reader, the same words
    ("truncated", "corrupt or not a PyTorch file", "corrupt or not a PyTorch file"),
    ("random-bytes", "corrupt or not a PyTorch file", "corrupt or not a PyTorch file"),
    ("code-pickle", "loading them could run code", "loading them could run code"),
    ("other-arch", "does not fit resnet8 with 10 classes", "does not fit resnet8 with 10 classes"),
    ("other-classes", "trained for 100 classes", "trained for 100 classes"),
    ("no-recipe", "lacks recipe", "lacks recipe"),
]


@pytest.mark.parametrize("kind, export_msg, validate_msg", STUDENT_CASES, ids=[c[0] for c in STUDENT_CASES])
def test_bad_student_checkpoint(reference_run: Path, tmp_path: Path, kind: str, export_msg: str,
                                validate_msg: str) -> None:
    marker = tmp_path / "pwned"
    run = _bad_student(kind, reference_run, tmp_path / "run", marker)
    assert_result_error(invoke("export", str(run), "--quiet"), 2, export_msg, "student.pt")
    assert_result_error(invoke("validate", str(run), "--quiet"), 2, validate_msg, "student.pt")
    assert not marker.exists()
    assert not (run / "export").exists() and not (run / "eval").exists()


# ----------------------------------------------------------------------------- last.pt for --resume


def _other_arch_state(state: dict[str, Any]) -> dict[str, Any]:
    """The training state with the student swapped for another architecture (resnet20)."""
    module = state["module"]
    prefix = next(k[: -len("conv1.weight")] for k in module if k.endswith("conv1.weight"))
    other = {prefix + k: v for k, v in create_model("resnet20", num_classes=10).state_dict().items()}
    state["module"] = {**{k: v for k, v in module.items() if not k.startswith(prefix)}, **other}
    return state


@pytest.mark.parametrize("kind", ["truncated", "random-bytes", "code-pickle", "other-arch"])
def test_bad_last_checkpoint_on_resume(reference_run: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    run = copy_run(reference_run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    if kind == "other-arch":
        state = torch.load(last, map_location="cpu", weights_only=True)
        state["epoch"] = 1  # so the student stage really loads it
        torch.save(_other_arch_state(state), last)
        fragment = "does not fit this recipe's models"
    else:
        _bad_file(kind, reference_run / "checkpoints" / "last.pt", last, marker)
        fragment = "not a readable checkpoint"
    before = last.read_bytes()
    student_before = (run / "student.pt").read_bytes()
    result = invoke(*TRAIN, "--run-dir", str(run), "--resume")
    assert_result_error(result, 2, fragment, str(last))
    assert not marker.exists()
    assert last.read_bytes() == before and (run / "student.pt").read_bytes() == student_before


# ----------------------------------------------------------------------------- ONNX artifacts


def _onnx(path: Path, channels: int, size: int, dynamic_hw: bool = False) -> Path:
    model = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    axes = {0: "batch", 2: "h", 3: "w"} if dynamic_hw else {0: "batch"}
    torch.onnx.export(model, (torch.zeros(2, channels, size, size),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": axes, "logits": {0: "batch"}})
    return path


ONNX_CASES = [("random-bytes", "onnxruntime cannot load"),
              ("input-3x64x64", "but the model takes [3, 64, 64]"),
              ("input-1-channel", "but the model takes [1, 32, 32]"),
              ("input-1-channel-dynamic", "onnxruntime cannot run it on images [3, 32, 32]")]


@pytest.mark.parametrize("kind, fragment", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_that_does_not_fit_is_refused(exported_run: Path, tmp_path: Path, kind: str, fragment: str) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    other = tmp_path / "other.onnx"
    if kind == "random-bytes":
        other.write_bytes(random.Random(kind).randbytes(4096))
    else:
        _onnx(other, 1 if "1-channel" in kind else 3, 64 if "64" in kind else 32, dynamic_hw="dynamic" in kind)
    result = invoke("validate", str(run), "--artifact", str(other), "--quiet")
    assert_result_error(result, 2, fragment, "other.onnx")
    assert not (run / "eval" / "results.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "one-byte-changed"])
def test_artifact_changed_after_export_is_refused(exported_run: Path, tmp_path: Path, damage: str) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    target = run / "export" / ("model.onnx" if damage == "truncated" else "model.int8.onnx")
    data = bytearray(target.read_bytes())
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        verify_artifact(read_manifest(run), target.name)
    result = invoke("validate", str(run), "--quiet")
    assert_result_error(result, 2, "changed since export", target.name, "export --force")
    assert not (run / "eval" / "results.json").exists()


# ----------------------------------------------------------------------------- TensorRT engines


class FakeTensorRT:
    """Stands in for the tensorrt module: records every deserialisation attempt."""

    __version__ = "10.3.0"

    def __init__(self) -> None:
        self.deserialized: list[int] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                pass

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> None:
                fake.deserialized.append(len(data))
                return None  # what TensorRT answers for garbage

        self.Logger, self.Runtime = Logger, Runtime


def _engine_with_sidecar(folder: Path, built_with: str = "10.3.0") -> Path:
    from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, ShapeProfile, make_sidecar, write_sidecar

    onnx = folder / "model.onnx"
    if not onnx.exists():
        onnx.write_bytes(b"onnx")
    engine = folder / "model.fp16.engine"
    engine.write_bytes(random.Random(1).randbytes(2048))
    profile = ShapeProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))
    write_sidecar(engine, make_sidecar(engine, onnx, "fp16", profile, RuntimeEnv(built_with, "GPU", "8.9")))
    return engine


@pytest.mark.parametrize("case", ["no-sidecar", "changed-after-build", "other-tensorrt", "matching"])
def test_engine_sidecar_is_checked_before_deserialising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        case: str) -> None:
    from richkd_deploy.runtime import tensorrt as tensorrt_runtime
    from richkd_deploy.runtime.engine_sidecar import RuntimeEnv, sidecar_path

    fake = FakeTensorRT()
    monkeypatch.setattr(tensorrt_runtime, "require", lambda *a, **k: fake)
    engine = _engine_with_sidecar(tmp_path, built_with="10.1.0" if case == "other-tensorrt" else "10.3.0")
    if case == "no-sidecar":
        sidecar_path(engine).unlink()
    elif case == "changed-after-build":
        engine.write_bytes(random.Random(2).randbytes(2048))
    with pytest.raises(ArtifactError) as err:
        tensorrt_runtime.load_engine(engine, RuntimeEnv("10.3.0", "GPU", "8.9"))
    if case == "matching":  # positive control: a clean sidecar does reach TensorRT (which rejects the bytes)
        assert fake.deserialized == [2048] and "could not deserialize" in str(err.value)
    else:
        assert fake.deserialized == [], "deserialised before the sidecar check refused it"


@pytest.mark.parametrize("case", ["random-bytes-no-sidecar", "changed-after-build"])
def test_validate_refuses_a_bad_engine_without_tensorrt(exported_run: Path, tmp_path: Path, case: str) -> None:
    """tensorrt is not installed here: the sidecar check alone must refuse (exit 2), not
    leave the engine 'pending' as if it were merely unrunnable on this machine."""
    from richkd_deploy.runtime.engine_sidecar import sidecar_path

    run = copy_run(exported_run, tmp_path / "run")
    engine = _engine_with_sidecar(tmp_path)
    if case == "random-bytes-no-sidecar":
        sidecar_path(engine).unlink()
        fragment = "has no sidecar"
    else:
        engine.write_bytes(random.Random(2).randbytes(2048))
        fragment = "changed since it was built"
    result = invoke("validate", str(run), "--artifact", str(engine), "--quiet")
    assert_result_error(result, 2, fragment, "model.fp16.engine")


# ----------------------------------------------------------------------------- CLIP cache


@pytest.mark.slow
def test_corrupted_clip_cache_is_detected_and_rebuilt(reference_run: Path, tmp_path: Path) -> None:
    """Same size, valid .npy header, different numbers: must be rebuilt, not trained on.
    The student is retrained from scratch over the corrupted cache; a silent reuse would
    change its weights."""
    run = copy_run(reference_run, tmp_path / "run")
    logits_path = run / "clip" / LOGITS_FILE
    size = logits_path.stat().st_size
    arr = np.load(logits_path, mmap_mode="r+")
    arr[:] = arr[::-1].copy()  # every image gets another image's CLIP logits
    arr.flush()
    del arr
    assert logits_path.stat().st_size == size
    assert "corrupt" in validate_clip_cache(run / "clip")
    shutil.rmtree(run / "checkpoints")
    (run / "student.pt").unlink()
    out = run_cli(*TRAIN, "--run-dir", str(run), "--resume")
    assert out.returncode == 0, out.stderr
    log = (run / "train.log").read_text()
    assert f"{LOGITS_FILE} is corrupt" in log and "rebuilding the CLIP target cache" in log
    assert validate_clip_cache(run / "clip") is None
    assert (run / "clip" / LOGITS_FILE).read_bytes() == (reference_run / "clip" / LOGITS_FILE).read_bytes()
    assert same_weights(reference_run / "student.pt", run / "student.pt")
