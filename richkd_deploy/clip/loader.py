"""Load a frozen open_clip model from a hub tag, a local checkpoint, or random weights.

Why a wrapper around `open_clip.create_model_and_transforms`:

- Offline, open_clip's hub download retries for about 46 s and then fails with a
  generic RuntimeError. Here a tag is first looked up in the local caches
  (Hugging Face hub cache, `~/.cache/clip`); if it is not cached and the hub is
  offline or unreachable (a 3 s connection probe), loading fails at once with a
  message that says how to pass a local file or allow random weights.
- Random weights teach nothing, so they must be asked for (`allow_random`) and
  are loud. They are seeded, so two loads in two processes (a resumed run, DDP
  ranks) give the same "random teacher" and cached targets stay consistent.
- Every load carries a `weights_id` that goes into cache fingerprints, so targets
  computed with other weights are never reused silently.
- OpenAI weights were trained with QuickGELU; open_clip only warns when the
  architecture config disagrees with the tag. A tag that says QuickGELU gets it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from richkd_deploy.errors import RecipeError, RichKDError
from richkd_deploy.runs import sha256_file

logger = logging.getLogger("richkd_deploy.clip")

CONFIG_DIR = Path(__file__).parent / "configs"
RANDOM_SEED = 0
_PROBE_TIMEOUT_S = 3.0
_registered = False
_sha_cache: dict[tuple[str, int, int], str] = {}


class ClipLoadError(RichKDError):
    """CLIP weights cannot be found, downloaded or loaded into the architecture."""


@dataclass
class LoadedClip:
    """A frozen CLIP model with what the rest of the toolkit needs to use it.

    `preprocess` is open_clip's validation transform (PIL -> normalised tensor);
    `mean`/`std`/`interpolation`/`resize_mode` describe it so the online path can
    reproduce it on tensors. `weights_id` identifies the weights: `<arch>/<tag>`,
    `<path>@sha256:<hex>` or `random:seed<N>`.
    """

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    embed_dim: int
    is_random: bool
    weights_id: str
    model_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def register_configs() -> None:
    """Add the package's own architecture configs (e.g. `tiny-ViT` for tests) to open_clip."""
    global _registered
    if _registered:
        return
    import open_clip

    if CONFIG_DIR.is_dir():
        open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def _no_weights_hint() -> str:
    return ("pass a local checkpoint (clip.pretrained: /path/to/open_clip_model.safetensors, "
            "or -o clip.pretrained=PATH), or for a smoke test only set clip.pretrained: none "
            "with clip.allow_random: true (random weights teach nothing)")


def resolve_arch(model_name: str) -> str:
    """Map a user's architecture name to an open_clip config name, or raise with close names."""
    register_configs()
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise RecipeError(
            f"clip.model: {model_name!r}: schema names are not supported; give a built-in open_clip "
            "architecture (e.g. ViT-L-14) and put the weights file in clip.pretrained")
    name = model_name.strip().replace("/", "-")
    models = open_clip.list_models()
    if name in models:
        return name
    lower = {m.lower(): m for m in models}
    if name.lower() in lower:
        return lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(lower[c] for c in close)}? " if close else ""
    raise RecipeError(
        f"clip.model: unknown open_clip architecture {model_name!r}; {hint}"
        "see open_clip.list_models() for all names")


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = sha256_file(path)
    return _sha_cache[key]


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False


def _reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """A TCP connection probe, bounded in time even when DNS hangs (it runs in a
    daemon thread): enough to tell 'no network' before open_clip's long retries."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="clip-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_tag_file(tag_cfg: dict[str, Any], hf_cache_dir: str | None = None) -> str | None:
    """The local file open_clip would use for a tag, if it is already downloaded."""
    if tag_cfg.get("file") and Path(tag_cfg["file"]).is_file():
        return str(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache
            from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, _get_safe_alternatives

            repo_id, filename = os.path.split(hub)
            filename = filename or HF_WEIGHTS_NAME
            names = [*_get_safe_alternatives(filename), filename]
            if filename == HF_WEIGHTS_NAME and HF_SAFE_WEIGHTS_NAME not in names:
                names.insert(0, HF_SAFE_WEIGHTS_NAME)
            for name in names:
                found = try_to_load_from_cache(repo_id=repo_id, filename=name, cache_dir=hf_cache_dir)
                if isinstance(found, str) and Path(found).is_file():
                    return found
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic random init without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _create(arch: str, pretrained: str | None, **kwargs: Any) -> tuple[nn.Module, Callable[[Any], torch.Tensor]]:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, **kwargs)
    return model, preprocess


@dataclass
class _Weights:
    """Where a load's weights come from: `source` is a file, an open_clip tag to
    download, or None for seeded random weights."""

    source: str | None
    weights_id: str
    is_random: bool = False
    downloading: bool = False
    tag_kwargs: dict[str, Any] = field(default_factory=dict)


def _random_weights(allow_random: bool) -> _Weights:
    if not allow_random:
        raise RecipeError(
            "clip.pretrained: 'none' means random CLIP weights, which teach nothing; set "
            "clip.allow_random: true to run anyway (tests, smoke runs), or give an open_clip tag "
            "or a local checkpoint file")
    return _Weights(source=None, weights_id=f"random:seed{RANDOM_SEED}", is_random=True)


def _tag_weights(arch: str, spec: str) -> _Weights:
    """An open_clip tag: its cached file when there is one, else a download, refused
    at once when the hub is offline or unreachable."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(arch, spec)
    if not tag_cfg:
        looks_like_path = os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors"))
        if looks_like_path:
            raise ClipLoadError(f"clip.pretrained: file {spec} does not exist; give the path of an "
                                f"open_clip checkpoint for {arch} (e.g. open_clip_model.safetensors)")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipLoadError(
            f"clip.pretrained: {spec!r} is neither a file nor an open_clip tag for {arch} "
            f"(tags: {', '.join(tags) or 'none'}); " + _no_weights_hint())
    tag_kwargs: dict[str, Any] = {}
    if tag_cfg.get("quick_gelu"):
        tag_kwargs["force_quick_gelu"] = True
    for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                     ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
        if key in tag_cfg:
            tag_kwargs[arg] = tag_cfg[key]
    weights_id = f"{arch}/{spec}"
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:  # load the cached file directly: no network, no retries
        return _Weights(source=cached, weights_id=weights_id, tag_kwargs=tag_kwargs)
    endpoint = _hub_endpoint() if tag_cfg.get("hf_hub") else tag_cfg.get("url", "")
    if _hub_offline() and tag_cfg.get("hf_hub"):
        raise ClipLoadError(
            f"CLIP weights {arch}/{spec} are not in the local cache and the hub is offline "
            f"(HF_HUB_OFFLINE is set); download them elsewhere and " + _no_weights_hint())
    if not _reachable(endpoint):
        raise ClipLoadError(
            f"CLIP weights {arch}/{spec} are not in the local cache and {urlparse(endpoint).hostname} "
            "cannot be reached; download them elsewhere and " + _no_weights_hint())
    logger.info("downloading CLIP weights %s/%s (open_clip cache)", arch, spec)
    # let open_clip download into its own cache
    return _Weights(source=spec, weights_id=weights_id, downloading=True, tag_kwargs=tag_kwargs)


def _resolve_weights(arch: str, spec: str, allow_random: bool) -> _Weights:
    if spec.lower() == "none":
        return _random_weights(allow_random)
    if Path(spec).expanduser().is_file():
        path = Path(spec).expanduser().resolve()
        return _Weights(source=str(path), weights_id=f"{path}@sha256:{_file_sha256(path)}")
    return _tag_weights(arch, spec)


def _instantiate(arch: str, spec: str, weights: _Weights) -> tuple[nn.Module, Callable[[Any], torch.Tensor]]:
    """open_clip's model and transform; its many exception types become one ClipLoadError."""
    try:
        if weights.is_random:
            with _seeded(RANDOM_SEED):
                return _create(arch, None, pretrained_text=False, pretrained_image=False)
        return _create(arch, weights.source, **weights.tag_kwargs)
    except RichKDError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/KeyError/ValueError for all of these
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        if weights.downloading:
            raise ClipLoadError(f"could not download CLIP weights {arch}/{spec} ({first}); retry, or download "
                                "them elsewhere and " + _no_weights_hint()) from None
        raise ClipLoadError(
            f"could not load CLIP {arch} with weights {spec!r} ({first}); check that the checkpoint "
            f"matches clip.model (open_clip architecture names, e.g. ViT-L-14-quickgelu for OpenAI "
            f"weights), or " + _no_weights_hint()) from None


def _describe(arch: str, model: nn.Module, preprocess: Callable[[Any], torch.Tensor], weights: _Weights,
              device: torch.device | str) -> LoadedClip:
    """The LoadedClip for a frozen model: its preprocessing, sizes and tokenizer."""
    import open_clip
    from open_clip.model import get_model_preprocess_cfg

    pcfg = get_model_preprocess_cfg(model)
    size = pcfg.get("size", 224)
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    embed_dim = int(getattr(getattr(model, "visual", None), "output_dim", 0)
                    or _probe_embed_dim(model, image_size, device))
    try:
        tokenizer = _tokenizer(arch)
    except Exception as exc:  # Hugging Face tokenizers download their vocabulary
        raise ClipLoadError(f"could not build the text tokenizer of CLIP {arch} ({type(exc).__name__}: "
                            f"{(str(exc).strip().splitlines() or [''])[0][:200]}); it may need a download: choose an architecture with "
                            "CLIP's own BPE tokenizer (ViT-*, RN*) or run once online") from None
    return LoadedClip(
        model=model, preprocess=preprocess, tokenizer=tokenizer, image_size=image_size, embed_dim=embed_dim,
        is_random=weights.is_random, weights_id=weights.weights_id, model_name=arch,
        mean=tuple(float(v) for v in pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in pcfg.get("std", open_clip.OPENAI_DATASET_STD)),  # type: ignore[arg-type]
        interpolation=str(pcfg.get("interpolation", "bicubic")),
        resize_mode=str(pcfg.get("resize_mode", "shortest")),
    )


def _announce(loaded: LoadedClip, weights: _Weights, seconds: float, log: Callable[[str], None] | None) -> None:
    msg = (f"CLIP {loaded.model_name} loaded ({loaded.weights_id}) in {seconds:.1f}s: image {loaded.image_size}px, "
           f"embed {loaded.embed_dim}-d")
    logger.info(msg)
    if log is not None:
        log(msg)
    if loaded.is_random:
        warn = ("!!! WARNING: CLIP has RANDOM weights (clip.pretrained: none) - its zero-shot logits and "
                "features are noise; use this for tests and smoke runs only, never for a real student !!!")
        logger.warning(warn)
        if log is not None:
            log(warn)
    elif (not weights.tag_kwargs and "openai" in loaded.weights_id.lower()
          and "quickgelu" not in loaded.model_name.lower()):
        logger.warning("a local OpenAI checkpoint needs the QuickGELU architecture (e.g. %s-quickgelu)",
                       loaded.model_name)


def load_clip(model_name: str, pretrained: str, allow_random: bool = False,
              device: torch.device | str = "cpu", log: Callable[[str], None] | None = None) -> LoadedClip:
    """Load CLIP frozen (eval mode, no gradients) on `device`.

    `pretrained` is an open_clip tag (e.g. `openai`, resolved through open_clip's own
    cache/download), an existing local checkpoint file, or `none` for seeded random
    weights (only with `allow_random`).
    """
    arch = resolve_arch(model_name)
    spec = (pretrained or "none").strip()
    weights = _resolve_weights(arch, spec, allow_random)
    t0 = time.perf_counter()
    model, preprocess = _instantiate(arch, spec, weights)
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    loaded = _describe(arch, model, preprocess, weights, device)
    _announce(loaded, weights, time.perf_counter() - t0, log)
    return loaded


@functools.lru_cache(maxsize=8)
def _tokenizer(arch: str) -> Callable[..., torch.Tensor]:
    """Tokenizers are stateless and slow to build (the BPE merges): one per architecture."""
    import open_clip

    return open_clip.get_tokenizer(arch)


def _hub_endpoint() -> str:
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return "https://huggingface.co"


def _probe_embed_dim(model: nn.Module, image_size: int, device: torch.device | str) -> int:
    with torch.no_grad():
        out = model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device))  # type: ignore[operator]
    return int(out.shape[-1])
