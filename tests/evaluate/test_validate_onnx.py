"""`validate --onnx MODEL --data DIR`: a classifier exported outside this tool (plain
`torch.onnx.export` of a random-init torchvision resnet18 at 64 px) validated on a
generated image folder, through the real CLI; its preprocessing from flags, from our
metadata contract, and the one-line errors for input that cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

from richkd_deploy.cli import main
from richkd_deploy.evaluate.external import resolve_preprocess

SIZE = 64


def _folder(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "val" / f"class{c}"
        d.mkdir(parents=True)
        for k in range(per_class):
            h, w = (80, 80) if k % 2 else (72, 96)
            arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            arr[..., c % 3] += 150
            Image.fromarray(arr).save(d / f"{k}.png")
    return root


def _export(path: Path, classes: int = 3, meta: dict[str, str] | None = None) -> Path:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=classes).eval()
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    if meta:
        proto = onnx.load(str(path))
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("onnx")
    data = _folder(tmp / "images")
    return tmp, _export(tmp / "resnet18.onnx"), data


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code), out.out, out.err


FAST = ["-o", "validate.corruptions.samples=6", "-o", "validate.corruptions.names=[gaussian_noise,contrast]",
        "-o", "validate.corruptions.severities=[1,5]"]


def test_external_onnx_validated_with_reference_and_report(setup, capsys) -> None:
    tmp, model, data = setup
    out = tmp / "out"
    code, stdout, err = _cli(["validate", "--onnx", str(model), "--data", str(data), "--reference", str(model),
                              "--out", str(out), "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
                              *FAST], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert res["dataset"]["classes"] == ["class0", "class1", "class2"] and res["dataset"]["test_samples"] == 18
    assert "no held-out split" in res["dataset"]["calibration"]
    assert "no held-out split" in (out / "report.md").read_text()
    pre = res["preprocess"]
    assert pre["input_size"] == SIZE and pre["source"] == "flags" and pre["crop_ratio"] == 0.875
    art, ref = (next(r for r in res["rows"] if r["role"] == role) for role in ("artifact", "student"))
    assert art["status"] == "ok" and art["clean"]["top1"] is not None and art["calibration"] is None
    assert art["agreement"]["student"]["top1_agreement"] == 1.0  # the same file as its own reference
    assert set(art["corruptions"]["accuracy"]) == {"gaussian_noise", "contrast"}
    assert art["latency"]["batch1_p50_ms"] > 0
    gates = {g["gate"]: g for g in res["gates"]}
    assert gates["max_top1_drop"]["status"] == "pass" and gates["min_agreement"]["status"] == "pass"
    assert "assuming pixel scale" in stdout  # what was assumed is said, not silent


def test_without_reference_relative_gates_pending_and_default_out(setup, capsys) -> None:
    tmp, model, data = setup
    code, _, err = _cli(["validate", "--onnx", str(model), "--data", str(data), "--quiet", *FAST], capsys)
    assert code == 0, err
    res = json.loads((tmp / "resnet18.eval" / "results.json").read_text())
    statuses = {g["gate"]: g["status"] for g in res["gates"]}
    assert statuses["max_top1_drop"] == "pending" and statuses["min_agreement"] == "pending"


def test_gate_from_recipe_section_fails_with_exit_1(setup, capsys) -> None:
    tmp, model, data = setup
    recipe = tmp / "gates.yaml"
    recipe.write_text("validate:\n  gates:\n    max_ece: 0.00001\n"
                      "  corruptions:\n    samples: 6\n    names: [contrast]\n    severities: [1]\n")
    code, _, err = _cli(["validate", "--onnx", str(model), "--data", str(data), "--quiet", "--recipe", str(recipe),
                       "--out", str(tmp / "r")], capsys)
    assert code == 1, err
    res = json.loads((tmp / "r" / "results.json").read_text())
    assert {g["gate"]: g["status"] for g in res["gates"]}["max_ece"] == "fail"
    assert res["dataset"]["corruptions"] == ["contrast"]


def test_preprocessing_from_our_metadata_contract(setup, capsys) -> None:
    tmp, _, data = setup
    contract = {"format": "richkd-deploy/preprocess/1", "input_size": [SIZE, SIZE], "pixel_scale": [0, 255],
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop": None}
    model = _export(tmp / "ours.onnx", meta={"preprocess": json.dumps(contract),
                                             "classes": json.dumps(["class0", "class1", "class2"])})
    code, stdout, err = _cli(["validate", "--onnx", str(model), "--data", str(data), *FAST], capsys)
    assert code == 0, err
    pre = json.loads((tmp / "ours.eval" / "results.json").read_text())["preprocess"]
    assert pre["source"] == "metadata" and pre["mean"] == [0.5] * 3 and pre["crop_ratio"] is None
    assert "assuming" not in stdout


def test_bgr_and_pixel_scale_give_the_same_input_tensor() -> None:
    """(p/1 - 255 m)/(255 d) == (p/255 - m)/d, and BGR reverses the RGB statistics."""
    a = resolve_preprocess({}, (SIZE, SIZE), {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_ratio": None,
                                              "pixel_scale": 255}, lambda m: None)
    b = resolve_preprocess({}, (SIZE, SIZE), {"mean": [76.5, 51.0, 25.5], "std": [153.0, 127.5, 102.0],
                                              "crop_ratio": None, "pixel_scale": 1, "channel_order": "bgr"},
                           lambda m: None)
    np.testing.assert_allclose(b.rgb_mean_std()[0], a.rgb_mean_std()[0], rtol=1e-6)
    np.testing.assert_allclose(b.rgb_mean_std()[1], a.rgb_mean_std()[1], rtol=1e-6)


@pytest.mark.parametrize("case", ["classes", "size", "notonnx", "nodata", "nodatafolder", "mean"])
def test_bad_input_is_one_line_exit_2(setup, case, capsys) -> None:
    tmp, model, data = setup
    args = ["validate", "--onnx", str(model), "--data", str(data), "--quiet"]
    if case == "classes":
        args[2] = str(_export(tmp / "five.onnx", classes=5))
    elif case == "size":
        args += ["--input-size", "96"]
    elif case == "notonnx":
        bad = tmp / "bad.onnx"
        bad.write_bytes(b"not a model")
        args[2] = str(bad)
    elif case == "nodata":
        args = ["validate", "--onnx", str(model)]
    elif case == "nodatafolder":
        args[4] = str(tmp / "missing")
    elif case == "mean":
        args += ["--mean", "0.5,0.5"]
    code, _, err = _cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if case == "classes":
        assert "outputs 5 classes" in err and "3 class folders" in err


def test_contract_records_the_eval_crop_and_applies_it() -> None:
    """data.eval_crop_ratio reaches the contract, and `preprocess` crops the centre
    square of ratio x shorter side before resizing (an image already at input_size is
    taken as prepared, like the resize step)."""
    from exporters.contract import build_contract, preprocess

    payload = {"input_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "classes": ["a", "b"],
               "recipe": {"data": {"dataset": "imagefolder", "eval_crop_ratio": 0.5}}}
    c = build_contract(payload)
    assert c["crop"]["ratio"] == 0.5
    raw = np.random.default_rng(0).integers(0, 256, (1, 40, 64, 3), dtype=np.uint8)
    centre = raw[:, 10:30, 22:42]  # side round(0.5 * 40) = 20, centred
    np.testing.assert_array_equal(preprocess(raw, c), preprocess(centre, {**c, "crop": None}))
    assert np.abs(preprocess(raw, c) - preprocess(raw, {**c, "crop": None})).max() > 0.1
    assert build_contract({**payload, "recipe": {"data": {"dataset": "imagefolder"}}})["crop"] is None
    same = raw[:, :16, :16]
    np.testing.assert_array_equal(preprocess(same, c), preprocess(same, {**c, "crop": None}))
