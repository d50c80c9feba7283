"""The `richkd-deploy` command line.

Each command parses its arguments, calls one library function and prints the
result; no logic lives here. User errors (`RichKDError`) become one line on stderr
and their exit code (2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from richkd_deploy import __version__
from richkd_deploy.errors import RichKDError

RUN_HELP = "run folder (default: the newest run under ./runs)"


def _overrides_option(f):
    return click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="override a recipe key, e.g. -o optim.epochs=1 (repeatable)")(f)


def _resolve_run(run: str | None, require: str = "student.pt") -> Path:
    from richkd_deploy.runs import newest_run

    if run is None:
        return newest_run(require=require)
    path = Path(run)
    if not (path / require).exists():
        raise RichKDError(f"{path}: no {require} in this folder; give a run folder made by richkd-deploy train")
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="richkd-deploy")
def cli() -> None:
    """Distil small image classifiers with RichKD, export them to ONNX/TensorRT, and
    validate the exported artifacts before they ship."""


@cli.group()
def recipe() -> None:
    """Inspect recipes, list the packaged ones, copy one to edit."""


@recipe.command("check")
@click.argument("file", metavar="RECIPE")
@_overrides_option
def recipe_check(file: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE (a file, or a packaged recipe's name) and print the resolved recipe."""
    from richkd_deploy import recipes_catalog
    from richkd_deploy.models.for_recipe import check_architectures

    r = recipes_catalog.load(file, overrides)
    check_architectures(r)
    click.echo(r.to_yaml(), nl=False)
    click.echo(f"# ok: {r.source} (hash {r.hash()[:12]})", err=True)


@recipe.command("list")
def recipe_list() -> None:
    """The recipes shipped in the package, usable by name (richkd-deploy train NAME)."""
    from richkd_deploy import recipes_catalog, user_cache

    shipped = recipes_catalog.packaged()
    width = max((len(r.name) for r in shipped), default=0)
    for r in shipped:
        click.echo(f"{r.name:<{width}}  {r.description}")
    click.echo(f"# in {recipes_catalog.PACKAGED_DIR}; relative paths in them resolve against "
               f"{user_cache.data_dir()}", err=True)
    click.echo("# use one by name (richkd-deploy train NAME) or copy it to edit (richkd-deploy recipe init NAME)",
               err=True)


@recipe.command("init")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
@click.option("--force", is_flag=True, help="overwrite DEST if it exists")
def recipe_init(name: str, dest: str | None, force: bool) -> None:
    """Copy packaged recipe NAME to DEST (default ./NAME.yaml) to edit."""
    from richkd_deploy import recipes_catalog

    path = recipes_catalog.init(name, dest, force=force)
    click.echo(f"wrote {path}; edit it, then: richkd-deploy train {path}")


@cli.command()
@click.argument("recipe_file", metavar="RECIPE")
@_overrides_option
@click.option("--run-dir", type=click.Path(file_okay=False), help="run folder (default: runs/<recipe name>)")
@click.option("--resume", is_flag=True, help="continue from the run folder's last checkpoint")
@click.option("--force", is_flag=True, help="start over in a run folder that already holds a run")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="processes on this machine (launches torchrun; DDP)")
@click.option("--quiet", is_flag=True, help="no progress bars or per-epoch lines")
def train(recipe_file: str, overrides: tuple[str, ...], run_dir: str | None, resume: bool, force: bool, nproc: int,
          quiet: bool) -> None:
    """Train the teacher (if needed) and distil the student described by RECIPE (a file, or
    a packaged recipe's name: richkd-deploy recipe list)."""
    from richkd_deploy import recipes_catalog
    from richkd_deploy.models.for_recipe import check_architectures

    r = recipes_catalog.load(recipe_file, overrides)  # validate before launching anything
    check_architectures(r)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "richkd_deploy", "train", recipe_file, *sum((["-o", o] for o in overrides), [])]
        cmd += (["--run-dir", run_dir] if run_dir else []) + (["--resume"] if resume else []) + \
               (["--force"] if force else []) + (["--quiet"] if quiet else [])
        raise SystemExit(subprocess.call(cmd))
    from richkd_deploy.train import train_run

    root = train_run(r, Path(run_dir) if run_dir else None, resume=resume, force=force, quiet=quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"done: {root / 'student.pt'}")


@cli.command()
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--trt", is_flag=True, help="also build TensorRT engines (needs tensorrt and an NVIDIA GPU)")
@click.option("--force", is_flag=True, help="replace an existing export")
@click.option("--quiet", is_flag=True)
@click.option("--weights", help="a model trained elsewhere: .pth/.safetensors file or library tag (needs --arch, "
                                "--data; RUN is the folder to create)")
@click.option("--arch", help="with --weights: torchvision/<name> or timm/<name> (see richkd-deploy models)")
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="with --weights: image folder "
              "(train/ for calibration, val/ or test/ for the verdict)")
@click.option("--input-size", type=click.IntRange(8, 4096), help="with --weights: default the model's own")
@click.option("--qat", is_flag=True, help="fine-tune the student with fake quantization under the run's "
              "distillation target before making model.int8.onnx (epochs: export.int8.qat_epochs, else 2)")
@click.option("--qat-epochs", type=int, default=None, help="QAT epochs (implies --qat)")
@_overrides_option
def export(run: str | None, trt: bool, force: bool, quiet: bool, weights: str | None, arch: str | None,
           data_root: str | None, input_size: int | None, qat: bool, qat_epochs: int | None,
           overrides: tuple[str, ...]) -> None:
    """Export a finished run to ONNX (fp32, fp16, int8 Q/DQ) and, with --trt, TensorRT.
    With --qat (or export.int8.qat_epochs in the recipe), model.int8.onnx comes from a
    quantization-aware fine-tune of the student (RUN/qat/student_qat.pt)."""
    from exporters.pipeline import export_run
    from richkd_deploy.evaluate.corruptions import corrupt  # for export.int8.calibration_corruptions

    if weights is not None or arch is not None or data_root is not None:
        if not (weights and arch and data_root and run):
            raise RichKDError("export --weights needs --arch, --data and a RUN folder to create")
        from richkd_deploy.adopt import adopt_checkpoint

        adopt_checkpoint(weights, arch, data_root, run, input_size=input_size, force=force, overrides=overrides,
                         log=(lambda m: None) if quiet else click.echo)
    root = _resolve_run(run)
    from richkd_deploy.manifest import check_can_export
    from richkd_deploy.runs import RunDir, run_lock
    from richkd_deploy.train.qat import qat_epochs_for, qat_run

    epochs = qat_epochs_for(root, qat, qat_epochs)
    with run_lock(root, "export"):  # QAT and the export under one lock, as training holds it
        qat_file = None
        if epochs > 0:
            check_can_export(RunDir(root).export_dir, force)  # before the fine-tune, not after
            qat_file = qat_run(root, epochs, quiet=quiet)
        export_run(root, trt=trt, force=force, quiet=quiet, log=(lambda m: None) if quiet else click.echo,
                   corrupt=corrupt, qat_student=qat_file)
    click.echo(f"done: {root / 'export' / 'manifest.json'}")


@cli.command()
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--artifact", "artifacts", multiple=True, help="evaluate only this artifact (repeatable)")
@click.option("--calibrate", is_flag=True, help="fit a temperature and add model.calibrated.onnx")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt", "gpu", "npu"]), default="cpu",
              show_default=True, help="device: onnxruntime's cpu/cuda/tensorrt, OpenVINO's cpu/gpu/npu")
@click.option("--runtime", "runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
              show_default=True, help="what runs the ONNX artifacts (openvino: pip install 'richkd-deploy[openvino]')")
@click.option("--json", "as_json", is_flag=True, help="also print the results document to stdout")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="processes on this machine, each running a share of the images (launches torchrun)")
@click.option("--quiet", is_flag=True)
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False),
              help="validate this ONNX classifier trained elsewhere (no RUN; needs --data)")
@click.option("--data", "data_root", type=click.Path(file_okay=False),
              help="with --onnx: image folder (test/ or val/ with one folder per class)")
@click.option("--reference", type=click.Path(dir_okay=False), help="with --onnx: reference model for relative gates")
@click.option("--preprocess", "preprocess_file", type=click.Path(dir_okay=False),
              help="with --onnx: YAML/JSON with input_size, mean, std, pixel_scale, crop_ratio, channel_order")
@click.option("--input-size", type=click.IntRange(8, 4096), help="with --onnx: default the model's own")
@click.option("--mean", help="with --onnx: e.g. 0.485,0.456,0.406 (default: the metadata's, else ImageNet's)")
@click.option("--std", help="with --onnx: e.g. 0.229,0.224,0.225")
@click.option("--pixel-scale", type=float, help="with --onnx: pixels are divided by this before mean/std (255 or 1)")
@click.option("--crop-ratio", help="with --onnx: centre crop before resizing, e.g. 0.875, or none")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"], case_sensitive=False), help="with --onnx")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
              help="with --onnx: a recipe whose validate: section sets gates and corruptions")
@click.option("--limit", type=click.IntRange(1), help="with --onnx: first N test images only")
@click.option("--out", type=click.Path(file_okay=False), help="with --onnx: results folder (default MODEL.eval/)")
@_overrides_option
def validate(run: str | None, artifacts: tuple[str, ...], calibrate: bool, provider: str, runtime: str,
             as_json: bool, nproc: int, quiet: bool, onnx_file: str | None, data_root: str | None,
             reference: str | None, preprocess_file: str | None, input_size: int | None, mean: str | None,
             std: str | None, pixel_scale: float | None, crop_ratio: str | None, channel_order: str | None,
             recipe_file: str | None, limit: int | None, out: str | None, overrides: tuple[str, ...]) -> None:
    """Check accuracy, calibration and corruption robustness of the exported artifacts
    against the recipe's gates. Exit 0 if every gate holds, 1 if one fails.

    With --onnx MODEL --data DIR: the same checks for a model trained elsewhere."""
    log = (lambda m: None) if (quiet or as_json) else click.echo
    if onnx_file is not None or data_root is not None:
        if not (onnx_file and data_root) or run:
            raise RichKDError("validate --onnx MODEL needs --data DIR and no RUN folder")
        if provider not in ("cpu", "cuda", "tensorrt") or runtime != "onnxruntime" or artifacts or calibrate \
                or nproc > 1:
            raise RichKDError("validate --onnx runs onnxruntime (--provider cpu/cuda/tensorrt) in one process; "
                              "--artifact, --calibrate, --runtime and --nproc apply to run folders")
        from richkd_deploy.evaluate.external import load_preprocess_file, validate_onnx

        pre = load_preprocess_file(preprocess_file) if preprocess_file else {}

        def floats(text: str | None, what: str) -> list[float] | None:
            if text is None:
                return None
            try:
                return [float(v) for v in text.replace(" ", ",").split(",") if v]
            except ValueError:
                raise RichKDError(f"{what} {text!r}: give numbers separated by commas, e.g. 0.5,0.5,0.5") from None

        flags = {"input_size": input_size, "mean": floats(mean, "--mean"), "std": floats(std, "--std"),
                 "pixel_scale": pixel_scale, "crop_ratio": crop_ratio,
                 "channel_order": channel_order.upper() if channel_order else None}
        pre.update({k: v for k, v in flags.items() if v is not None})
        results = validate_onnx(onnx_file, data_root, reference=reference, preprocess=pre, recipe_file=recipe_file,
                                overrides=overrides, out=out, provider=provider, limit=limit, quiet=quiet, log=log)
        if as_json:
            click.echo(json.dumps(results, indent=2, default=str))
        raise SystemExit(results["exit_code"])
    if overrides:
        raise RichKDError("validate -o applies with --onnx; a run's recipe is the one it was trained with")
    from exporters.calibrated import export_calibrated
    from richkd_deploy.dist import DistContext
    from richkd_deploy.evaluate import distributed
    from richkd_deploy.evaluate.harness import validate_run

    root = _resolve_run(run)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = [str(root), *sum((["--artifact", a] for a in artifacts), []), "--provider", provider,
                "--runtime", runtime] + (["--calibrate"] if calibrate else []) + \
               (["--json"] if as_json else []) + (["--quiet"] if quiet else [])
        raise SystemExit(distributed.launch(nproc, argv))
    dist = DistContext.from_env(distributed.device_type_for(provider))
    try:
        results = validate_run(root, artifacts=artifacts, calibrate=calibrate, provider=provider, quiet=quiet,
                               log=(lambda m: None) if (quiet or as_json) else click.echo,
                               write_calibrated=export_calibrated,
                               runtime=None if runtime == "onnxruntime" else runtime, dist=dist)
    finally:
        dist.close()
    code = distributed.rank_exit_code(results["exit_code"], dist)
    if as_json and dist.is_main:
        click.echo(json.dumps(results, indent=2))
    raise SystemExit(code)


@cli.command()
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="intra-op threads (default: all cores)")
@click.option("--iters", type=click.IntRange(1, 100000), default=50, show_default=True)
def bench(run: str | None, threads: int | None, iters: int) -> None:
    """Latency and throughput of torch eager vs onnxruntime FP32 and INT8."""
    from richkd_deploy.evaluate.latency import bench_run

    bench_run(_resolve_run(run), threads=threads, iters=iters, log=click.echo)


@cli.command()
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--runtime", type=click.Choice(["auto", "onnxruntime", "torch", "tensorrt"]), default="auto",
              show_default=True, help="runtime to run ARTIFACT on (auto: by its suffix)")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider")
@click.option("--golden", type=click.Path(dir_okay=False), help="golden file (default: golden.npz of the export)")
@click.option("--atol", type=float, help="largest |logit diff| allowed (default: by precision)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(artifact: str, runtime: str, provider: str, golden: str | None, atol: float | None, as_json: bool) -> None:
    """Rerun export/golden.npz through ARTIFACT using only its recorded preprocessing
    contract; exit 0 if the logits match, 1 if not."""
    from richkd_deploy.verify import verify_artifact

    result = verify_artifact(artifact, runtime=runtime, provider=provider, golden=golden, atol=atol)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.line())
    raise SystemExit(0 if result.ok else 1)


@cli.command("models")
@click.argument("pattern", required=False)
def list_models_cmd(pattern: str | None) -> None:
    """List architectures (zoo, torchvision/<name>, timm/<name>) matching a glob PATTERN,
    with parameter count and default input size."""
    from richkd_deploy.errors import RecipeError
    from richkd_deploy.models.catalog import TIMM_BUDGET, format_params, model_rows

    rows = model_rows(pattern)
    if not rows:
        raise RecipeError(f"no model matches {pattern!r}; try a glob such as 'timm/mobilenet*' or 'torchvision/*'")
    width = max(len(r.name) for r in rows)
    click.echo(f"{'name':<{width}}  {'params':>8}  input")
    for r in rows:
        click.echo(f"{r.name:<{width}}  {format_params(r.params):>8}  {r.input_size}")
    unknown = sum(r.params is None for r in rows)
    if unknown:
        click.echo(f"? = not counted yet ({unknown} timm models; {TIMM_BUDGET} are counted per call and cached): "
                   "narrow the PATTERN, e.g. 'timm/mobilenetv3*'")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="richkd-deploy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except RichKDError as exc:  # one line, whatever the message quotes (a key or path with a newline)
        click.echo("error: " + str(exc).replace("\r", "\\r").replace("\n", "\\n"), err=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except OSError as exc:
        if exc.errno in (28, 27):  # ENOSPC, EFBIG
            click.echo(f"error: {exc.strerror}: {exc.filename or ''}; free space or raise the limit, then rerun",
                       err=True)
            raise SystemExit(2) from None
        raise
    raise SystemExit(0)
