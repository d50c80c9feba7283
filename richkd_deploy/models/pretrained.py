"""Starting weights for a teacher or student: a file, a URL, or a library's pretrained tag.

Users fine-tune ImageNet weights onto their own classes, so the file almost never
has the run's class count: everything is loaded strictly except the final linear
layer, which is replaced by a fresh one (and the log says so) when its class count
differs -- a missing or misshapen backbone key is still an error, because a
half-loaded network trains to a plausible but worse model without complaint.

A spec (`teacher.checkpoint`, `student.init`) is one of:
- a local file: torchvision `.pth`, timm `.safetensors`/`.pth`/`.bin`, our `student.pt`/`teacher.pt`;
- an http(s) URL (downloaded once into the checkpoint cache by `checkpoint.fetch_checkpoint`);
- a tag of the library the architecture comes from: `imagenet` (or `default`) for the
  library's default weights, a torchvision enum name (`IMAGENET1K_V2`) or a timm tag
  (`ra_in1k`). Tags are resolved from the libraries' metadata without the network;
  the file is downloaded only when training, and offline (HF_HUB_OFFLINE=1 or no
  network) the error names the file to download and where to put its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd_deploy.errors import CheckpointError, RecipeError
from richkd_deploy.models import external
from richkd_deploy.models.checkpoint import load_checkpoint, load_state_dict_strict
from richkd_deploy.models.fetch import fetch_checkpoint

DEFAULT_TAGS = ("imagenet", "default", "pretrained")
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".tar")
_OFFLINE_VARS = ("RICHKD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class RemoteWeights:
    """Where a library tag's file lives: a Hugging Face Hub file (timm) or a URL."""

    label: str  # e.g. torchvision/resnet18:IMAGENET1K_V1
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str = "model.safetensors"

    @property
    def download_url(self) -> str:
        return self.url or f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_filename}"


@dataclass(frozen=True)
class LoadedWeights:
    source: str  # the local file the weights came from
    classifier_replaced: bool  # True: the head is fresh and must be trained


def is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def is_path(spec: str) -> bool:
    """A spec that names a file rather than a tag: it has a folder part, starts with
    `.`/`~`, or ends in a weight-file suffix."""
    return ("/" in spec or os.sep in spec or spec.startswith((".", "~"))
            or spec.lower().endswith(WEIGHT_SUFFIXES) or os.path.exists(spec))


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


# ---------------------------------------------------------------- tags


def resolve_tag(arch: str, tag: str, key: str) -> RemoteWeights:
    """The file behind a library tag, from the library's metadata only (no network).
    A zoo architecture has no library weights: the RecipeError says to give a file."""
    canonical = _canonical(arch, key)
    if "/" not in canonical:
        raise RecipeError(f"{key}: {tag!r} is not a file, and {canonical} is one of our CIFAR models, which has no "
                          "library weights; give a path to a .pth/.pt file or an http(s) URL")
    family, name = canonical.split("/", 1)
    if family == "torchvision":
        return _torchvision_tag(name, tag, key)
    return _timm_tag(name, tag, key)


def _canonical(arch: str, key: str) -> str:
    from richkd_deploy.models.registry import resolve_name

    return resolve_name(arch)


def _torchvision_tag(name: str, tag: str, key: str) -> RemoteWeights:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as e:
        raise RecipeError(f"{key}: torchvision/{name} has no pretrained weights; give a file") from e
    members = {m.lower(): m for m in enum.__members__}
    member = "DEFAULT" if tag.lower() in DEFAULT_TAGS else members.get(tag.lower())
    if member is None:
        valid = ", ".join(["imagenet", *enum.__members__])
        raise RecipeError(f"{key}: {tag!r} is not a torchvision/{name} weight; valid tags are {valid}, or give a file")
    weights = enum[member]
    return RemoteWeights(label=f"torchvision/{name}:{weights.name}", url=weights.url)


def _timm_tag(name: str, tag: str, key: str) -> RemoteWeights:
    timm = external._timm()
    from timm.models import get_pretrained_cfg

    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*") if "." in t]
    if not tags:
        raise RecipeError(f"{key}: timm/{name} has no pretrained weights; give a file")
    bare = tag.split(".", 1)[1] if tag.startswith(f"{name}.") else tag
    if bare.lower() in DEFAULT_TAGS:
        bare = tags[0]  # timm lists the default tag first
    if bare not in tags:
        raise RecipeError(f"{key}: {tag!r} is not a timm/{name} weight; valid tags are imagenet, "
                          f"{', '.join(tags)}, or give a file")
    cfg = get_pretrained_cfg(f"{name}.{bare}")
    hf_repo = getattr(cfg, "hf_hub_id", None)
    if hf_repo:
        filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return RemoteWeights(label=f"timm/{name}.{bare}", hf_repo=hf_repo, hf_filename=filename)
    url = getattr(cfg, "url", None)
    if not url:
        raise RecipeError(f"{key}: timm/{name}.{bare} names no downloadable file; give a file")
    return RemoteWeights(label=f"timm/{name}.{bare}", url=url)


def check_spec(arch: str, spec: str | None, key: str) -> None:
    """For `recipe check`: the file exists, or the tag is one the library knows.
    Nothing is downloaded here."""
    if not spec or is_url(spec):
        return
    if is_path(spec):
        if not Path(spec).expanduser().is_file():
            raise RecipeError(f"{key}: {spec} is not a file; give a local weight file, an http(s) URL, "
                              "or a library tag such as imagenet")
        return
    resolve_tag(arch, spec, key)


# ---------------------------------------------------------------- locating the file


def _offline_error(remote: RemoteWeights, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{key}: {remote.label} needs a download but {why}; download {remote.download_url} "
                           f"on a machine with network and set {key}: /path/to/{Path(remote.download_url).name}")


def _fetch_remote(remote: RemoteWeights, key: str, cache_dir: Path, progress: bool) -> Path:
    if remote.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(remote.hf_repo, remote.hf_filename)
        if isinstance(cached, str):
            return Path(cached)
        if offline():
            raise _offline_error(remote, key, "the machine is offline (HF_HUB_OFFLINE is set)")
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(remote.hf_repo, remote.hf_filename))
        except Exception as e:  # noqa: BLE001 -- network, auth, missing file: all one line for the user
            raise _offline_error(remote, key, f"the download failed ({type(e).__name__})") from None
    assert remote.url is not None
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / Path(remote.url).name  # torchvision's own cache
    if hub_copy.is_file():
        return hub_copy
    if offline():
        raise _offline_error(remote, key, "the machine is offline (HF_HUB_OFFLINE is set)")
    try:
        return fetch_checkpoint(remote.url, cache_dir=cache_dir, timeout=15, progress=progress)
    except CheckpointError as e:
        raise _offline_error(remote, key, f"the download failed ({e})") from None


def locate(arch: str, spec: str, key: str, cache_dir: Path, member: str | None = None, sha256: str | None = None,
           progress: bool = True) -> Path:
    """The local file a spec stands for, downloading it if it must and may."""
    if is_url(spec) or is_path(spec):
        return fetch_checkpoint(spec, cache_dir=cache_dir, member=member, sha256=sha256, progress=progress)
    return _fetch_remote(resolve_tag(arch, spec, key), key, cache_dir, progress)


def fetch_all(recipe: Any, cache_dir: Path, progress: bool = True) -> None:
    """Locate (downloading where needed and allowed) every weight file `recipe` names,
    so that no network or a missing file stops a run before any training, not after
    an hour of teacher training when the student's weights are wanted."""
    t = recipe.teacher
    specs: list[tuple[str, str, str | None, str | None, str | None]] = []
    if recipe.needs_teacher:
        specs += [("teacher.checkpoint", t.arch, t.checkpoint, t.checkpoint_member, t.sha256),
                  ("teacher.init", t.arch, t.init, None, None)]
    specs.append(("student.init", recipe.student.arch, recipe.student.init, None, None))
    for key, arch, spec, member, sha256 in specs:
        if spec:
            locate(arch, spec, key, cache_dir, member=member, sha256=sha256, progress=progress)


def read_state_dict(path: Path) -> Mapping[str, Any]:
    """Tensors from a `.safetensors` file (timm's format) or a torch file read with
    weights_only (`checkpoint.load_checkpoint`)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable .safetensors file ({e}); download it again") from None
    return load_checkpoint(path)


# ---------------------------------------------------------------- loading


def _state_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("model", "state_dict"):  # our student.pt / teacher.pt, RepDistiller, Lightning
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def load_except_classifier(model: nn.Module, state: Mapping[str, Any], source: str, key: str,
                           log: Callable[[str], None], replace_classifier: bool = True) -> bool:
    """Load `state` strictly into `model`, except a classifier of another class count,
    which keeps its fresh initialisation. Returns True when it was replaced.
    `replace_classifier=False` (a finished teacher, which is not trained again) makes
    another class count an error instead.

    A torchvision/timm model takes the library's own key names (`fc.weight`) or ours
    (`model.fc.weight`, from a student.pt of the same architecture).
    """
    state = {str(k): v for k, v in _state_of(state).items()}
    target: nn.Module = model
    if isinstance(model, external.LibraryClassifier):
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        target = model.model
        head_prefix = model.classifier_path()
    else:
        head = model.get_classifier()  # type: ignore[operator]
        head_prefix = next(n for n, m in model.named_modules() if m is head)
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    expected = target.state_dict()
    w_key, b_key = f"{head_prefix}.weight", f"{head_prefix}.bias"
    given_w = state.get(w_key)
    replaced = False
    if replace_classifier and isinstance(given_w, Tensor) and given_w.shape != expected[w_key].shape:
        if given_w.ndim != 2 or given_w.shape[1] != expected[w_key].shape[1]:
            raise CheckpointError(f"{key}: {source} has a classifier {w_key} of shape {list(given_w.shape)}, but "
                                  f"{getattr(model, 'arch', type(model).__name__)} expects {list(expected[w_key].shape)}"
                                  "; the file is for another architecture")
        state[w_key] = expected[w_key]
        if b_key in expected:
            state[b_key] = expected[b_key]
        replaced = True
        log(f"[{key.split('.')[0]}] {source}: its classifier has {given_w.shape[0]} classes, this run has "
            f"{expected[w_key].shape[0]}: {head_prefix} replaced by a freshly initialised layer")
    hint = (f"check {key} against the architecture" if replace_classifier else
            "check teacher.arch / data.dataset, or set teacher.init instead to fine-tune from these weights")
    if target is not model:  # loaded through the wrapper, so errors name the architecture and class count
        state = {f"model.{k}": v for k, v in state.items()}
    load_state_dict_strict(model, state, source=source, hint=hint)
    return replaced


def load_weights(model: nn.Module, arch: str, spec: str, key: str, cache_dir: Path, log: Callable[[str], None],
                 member: str | None = None, sha256: str | None = None, progress: bool = True,
                 replace_classifier: bool = True) -> LoadedWeights:
    """Locate the weights a spec names, load them (strict but for the classifier), log it."""
    path = locate(arch, spec, key, cache_dir, member=member, sha256=sha256, progress=progress)
    replaced = load_except_classifier(model, read_state_dict(path), str(path), key, log, replace_classifier)
    log(f"[{key.split('.')[0]}] {arch}: weights from {spec}" + (f" ({path})" if str(path) != spec else ""))
    return LoadedWeights(str(path), replaced)
