"""Teacher-driven QAT (`export --qat`, `export.int8.qat_epochs`): the fake quantization,
the fine-tune lowering the fake-quantized KD loss, and the smoke recipe end to end
through the real CLI (train -> export --qat -> validate)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from richkd_deploy import models
from richkd_deploy.train.qat import WEIGHT_QMAX, FakeQuant, QATStep, fake_quant_weight
from tests.exporters.helpers import load_images
from tests.train.helpers import SMOKE, cli


def test_weights_land_on_onnxruntimes_7bit_per_channel_grid() -> None:
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.01, 3, 8)[:, None, None, None]
    q = fake_quant_weight(w)
    scale = w.abs().flatten(1).amax(1) / WEIGHT_QMAX
    ints = q / scale[:, None, None, None]
    assert torch.allclose(ints, ints.round(), atol=1e-3) and ints.abs().max() <= WEIGHT_QMAX + 1e-3
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6 and not torch.equal(q, w)


def test_fake_quant_keeps_the_state_dict_and_comes_off_cleanly() -> None:
    torch.manual_seed(0)
    model = models.create_model("resnet8", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    keys, ref = list(model.state_dict()), model(x)[0].detach()
    fq = FakeQuant(model)
    assert fq.layers == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert list(model.state_dict()) == keys  # student.pt keeps its keys
    assert not torch.allclose(model(x)[0], ref, atol=1e-5)  # quantized forward differs ...
    fq.remove()
    assert torch.equal(model(x)[0].detach(), ref)  # ... and the float one is back


def _kd(step: QATStep, x: torch.Tensor, y: torch.Tensor) -> float:
    step.train(False)  # observers frozen: measuring does not move the ranges
    with torch.no_grad():
        return sum(float(step(x[i:i + 64], y[i:i + 64], torch.arange(0))[1]["kd"]) for i in range(0, len(x), 64))


def test_qat_changes_the_weights_and_lowers_the_fake_quantized_kd_loss() -> None:
    x_np, y_np, *_ = load_images("train", 256)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(0)
    teacher = models.create_model("resnet8", num_classes=10)
    student = models.create_model("resnet8", num_classes=10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    step = QATStep(student, teacher, None, alpha=0.7, temperature=4.0, w_ce=0.0, w_kd=1.0,
                   symmetric_activations=True)
    step.train(True)
    with torch.no_grad():  # calibrate the activation ranges, as the first QAT steps do
        for i in range(0, len(x), 64):
            step(x[i:i + 64], y[i:i + 64], torch.arange(0))
    start = _kd(step, x, y)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    step.train(True)
    for _ in range(3):
        for i in range(0, len(x), 64):
            loss = sum(step(x[i:i + 64], y[i:i + 64], torch.arange(0))[1].values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = _kd(step, x, y)
    assert end < 0.8 * start, (start, end)
    after = student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    # BatchNorm statistics are frozen during QAT (the student runs in eval mode)
    assert all(torch.equal(before[k], after[k]) for k in before if "running_" in k)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("qat") / "run"
    out = cli("train", str(SMOKE), "--run-dir", str(run), "--quiet")
    assert out.returncode == 0, out.stderr
    return run


@pytest.fixture(scope="module")
def qat_run(trained, tmp_path_factory):
    run = tmp_path_factory.mktemp("qat-export") / "run"
    shutil.copytree(trained, run)
    out = cli("export", str(run), "--qat-epochs", "1")
    assert out.returncode == 0, out.stderr
    return run, out.stdout


def test_export_qat_end_to_end(qat_run) -> None:
    run, stdout = qat_run
    assert "[qat] resnet8: 1 epoch(s) of QAT" in stdout and "target fused teacher + CLIP logits" in stdout
    qat_file = run / "qat" / "student_qat.pt"
    assert qat_file.is_file() and not list((run / "qat").rglob(".*.tmp"))
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")
    qat = entry["qat"]
    assert qat["epochs"] == 1 and len(qat["loss_per_epoch"]) == 1 and np.isfinite(qat["loss_per_epoch"][0])
    assert qat["lr"] == pytest.approx(0.05 * 0.01) and qat["student_qat"] == "qat/student_qat.pt"
    assert set(qat["terms_per_epoch"]) == {"ce", "kd"}
    # the int8 artifact is a Q/DQ graph, quantized from the QAT weights (not from student.pt)
    graph = onnx.load(str(run / "export" / "model.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 9 and ops.count("DequantizeLinear") >= 9 and "Conv" in ops
    student = torch.load(run / "student.pt", weights_only=True)["model"]
    tuned = torch.load(qat_file, weights_only=True)["model"]
    assert student.keys() == tuned.keys()
    assert any(not torch.equal(student[k], tuned[k]) for k in student)
    # model.onnx is still the trained student
    fp32 = next(a for a in manifest["artifacts"] if a["file"] == "model.onnx")
    assert "qat" not in fp32 and fp32["parity"]["max_abs_diff"] < 1e-3
    out = cli("validate", str(run), "--artifact", str(run / "export" / "model.int8.onnx"), "--json")
    assert out.returncode in (0, 1), out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["rows"]}
    assert "model.int8.onnx" in rows and rows["model.int8.onnx"]["clean"]["top1"] > 0


@pytest.mark.slow  # three more exports (~100 s on 2 cores)
def test_rerun_reuses_a_finished_qat_and_resumes_from_its_checkpoint(qat_run) -> None:
    run, _ = qat_run
    first = (run / "qat" / "student_qat.pt").read_bytes()
    out = cli("export", str(run), "--qat-epochs", "1", "--force")
    assert out.returncode == 0, out.stderr
    assert "reusing it" in out.stdout
    # a QAT killed after its last epoch's checkpoint, before student_qat.pt: the rerun resumes
    (run / "qat" / "student_qat.pt").unlink()
    out = cli("export", str(run), "--qat-epochs", "1", "--force")
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout
    a = torch.load(run / "qat" / "student_qat.pt", weights_only=True)["model"]
    b = torch.load(io.BytesIO(first), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # other settings: the old checkpoint is not resumed, QAT starts over
    out = cli("export", str(run), "--qat-epochs", "2", "--force", "--quiet")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")["qat"]["epochs"] == 2


def test_negative_qat_epochs_is_one_line_exit_2(trained) -> None:
    out = cli("export", str(trained), "--qat-epochs", "-1")
    assert out.returncode == 2 and "--qat-epochs -1" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_qat_on_a_run_without_a_teacher_is_refused(tmp_path) -> None:
    from tests.exporters.helpers import make_run

    run = make_run(tmp_path / "vanilla")  # distill.method vanilla: no teacher, no target
    out = cli("export", str(run), "--qat")
    assert out.returncode == 2, out.stderr
    assert "no teacher" in out.stderr and "Traceback" not in out.stderr
    assert not (run / "export" / "manifest.json").exists()


def test_qat_arrays_the_benchmarks_entry_trains_in_place_and_unpatches() -> None:
    from richkd_deploy.train.qat import qat_arrays
    from tests.exporters.helpers import TinyNet

    x_np, y_np, *_ = load_images("train", 256)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(0)
    net = TinyNet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = qat_arrays(net, TinyNet().eval(), x, y, epochs=2, lr=1e-3, optimizer="adam")
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert "forward" not in vars(net.conv1[0])  # the float forward is back
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
