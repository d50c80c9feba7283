"""Reading, writing and fetching checkpoints without surprises.

Three failure modes in research KD code motivate this module: teachers loaded with
`strict=False` (silently half-random), `torch.load` of untrusted pickles (runs
code), and checkpoints written in place (a crash or full disk leaves a truncated
file under the good name). Every user-fixable problem here is a `CheckpointError`
with a one-line message that says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor, nn

from richkd_deploy.errors import CheckpointError, RunError
from richkd_deploy.runs import atomic_write

# How many key names a mismatch message shows before "...".
_SHOW = 3
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


# ---------------------------------------------------------------- strict loading


def _extract_state_dict(obj: Any, source: str) -> Mapping[str, Any]:
    """Find the state dict in the shapes checkpoints come in: raw, or under 'model' /
    'state_dict' (RepDistiller saves {'epoch', 'model', 'accuracy', 'optimizer'})."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {source} holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    keys = ", ".join(map(str, list(obj)[:8]))
    raise CheckpointError(
        f"checkpoint {source} holds no state dict (expected tensors, or one under 'model' or "
        f"'state_dict'; found keys: {keys or 'none'})"
    )


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", ..." if len(keys) > _SHOW else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _classifier_weight_key(model: nn.Module) -> str | None:
    """State-dict key of the final linear weight (`fc`, `linear`, `classifier.0`, ...)."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    head = get()
    return next((f"{name}.weight" for name, m in model.named_modules() if m is head), None)


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    source: str,
    hint: str = "check teacher.arch / data.dataset",
) -> nn.Module:
    """Load weights so that every parameter is accounted for, or say exactly why not.

    Tolerated, because they carry no information: a `module.`/`_orig_mod.` prefix
    and a missing BatchNorm `num_batches_tracked` (old checkpoints). Anything else --
    a missing or unexpected key, a shape mismatch such as another class count --
    raises CheckpointError naming the first offenders, since a silently half-loaded
    teacher wastes a whole distillation run. Returns `model` for chaining.
    """
    raw = _extract_state_dict(state_dict, source)
    given: dict[str, Any] = {}
    for key, value in raw.items():
        given[_strip_prefixes(str(key))] = value
    expected = model.state_dict()

    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in given:
            given[key] = torch.zeros_like(value)

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'missing key')} ({_names(missing)})")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'unexpected key')} ({_names(unexpected)})")
    not_tensors = [k for k in expected if k in given and not isinstance(given[k], Tensor)]
    if not_tensors:
        problems.append(f"{_plural(len(not_tensors), 'entry')} not a tensor ({_names(not_tensors)})")
    mismatched = [
        k for k in expected if k in given and isinstance(given[k], Tensor) and given[k].shape != expected[k].shape
    ]
    for k in mismatched[:_SHOW]:
        problems.append(f"{k} has shape {list(given[k].shape)} but the model expects {list(expected[k].shape)}")
    if len(mismatched) > _SHOW:
        problems.append(f"{len(mismatched) - _SHOW} more shape mismatches")
    head = _classifier_weight_key(model)
    if head in mismatched and given[head].ndim == 2 and given[head].shape[1:] == expected[head].shape[1:]:
        problems.append(f"the checkpoint was trained for {given[head].shape[0]} classes")

    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        classes = getattr(model, "num_classes", None)
        what = f"{arch} with {classes} classes" if classes is not None else str(arch)
        raise CheckpointError(f"checkpoint {source} does not fit {what}: {', '.join(problems)}; {hint}")
    try:
        model.load_state_dict(given, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied; keep it one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {source} could not be loaded into the model: {first}") from e
    return model


# ---------------------------------------------------------------- load / save


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`, so a malicious pickle cannot run code.

    Torch reports a refused or corrupt file with a multi-line RuntimeError or
    UnpicklingError; here it becomes one CheckpointError line saying which case it is.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} not found; check the path")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_line(e)
        # random bytes also fail in the weights-only unpickler ("Unsupported operand"): that is a
        # damaged file, not one that carries code
        if "weights only load failed" in str(e).lower() and "unsupported operand" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {p} was refused: it contains Python objects that torch.load(weights_only=True) "
                f"will not unpickle because loading them could run code ({_refusal_detail(e)}). Only load "
                "checkpoints you trust; re-save the trusted one as a plain dict of tensors"
            ) from None
        raise CheckpointError(f"checkpoint {p} is corrupt or not a PyTorch file ({reason})") from e
    except Exception as e:  # noqa: BLE001 -- parsing damaged bytes can fail with any error type
        raise CheckpointError(
            f"checkpoint {p} is truncated, corrupt or not a PyTorch file "
            f"({type(e).__name__}: {_first_line(e)}); download or copy it again"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, expected a dict")
    return obj


STUDENT_FORMAT = "richkd-deploy/student/1"
STUDENT_KEYS = ("model", "arch", "num_classes", "input_size", "mean", "std")


def load_student_checkpoint(path: str | os.PathLike[str], require_recipe: bool = False) -> dict[str, Any]:
    """`student.pt` as `train` writes it, for export, validate and bench alike: read
    through `load_checkpoint` (weights_only, one-line errors), then its format and keys
    checked, so every command refuses the same bad file with the same words."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: train first (richkd-deploy train RECIPE) or pass the run folder")
    payload = load_checkpoint(p)
    if payload.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{p} is not a richkd-deploy student checkpoint (format {payload.get('format')!r}, "
                              f"expected {STUDENT_FORMAT!r}); pass a run folder made by richkd-deploy train")
    missing = [k for k in STUDENT_KEYS if k not in payload]
    if require_recipe and not isinstance(payload.get("recipe"), dict):
        missing.append("recipe")
    if missing:
        raise CheckpointError(f"{p} lacks {', '.join(missing)}; retrain with this version of richkd-deploy")
    return payload


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _refusal_detail(e: BaseException) -> str:
    """Name the refused global (e.g. `posix.system`) from torch's long message, whose
    wording differs between torch versions; its allowlisting advice is left out on purpose."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"it refers to {match.group(1)}" if match else "unsupported pickle content"


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` with torch.save so that `path` always holds a complete file: through
    `runs.atomic_write` (temp file, fsync, rename), whose failure keeps the previous file
    and names the OS error that torch.save itself would hide."""
    try:
        return atomic_write(Path(path), lambda f: torch.save(obj, f))
    except RunError as e:
        raise CheckpointError(str(e)) from None


# ---------------------------------------------------------------- fetch


def _is_url(ref: str) -> bool:
    return urllib.parse.urlsplit(ref).scheme.lower() in ("http", "https")


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(path: Path, sha256: str | None, what: str) -> None:
    if sha256 is None:
        return
    actual = _sha256_of(path)
    if actual.lower() != sha256.strip().lower():
        raise CheckpointError(
            f"{what} has sha256 {actual}, expected {sha256}; the file is damaged or not the one the recipe names"
        )


def _cache_name(url: str) -> str:
    """Stable per URL (hash) yet recognisable (basename) file name in the cache."""
    base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"


def _download(url: str, dest: Path, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    manual = f"download it by hand and set the local path to it instead of {url}"
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- http(s) only
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got = 0
                with (
                    open(tmp, "wb") as f,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f"fetch {dest.name.split('-', 1)[-1]}",
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    while chunk := resp.read(1 << 16):
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            raise CheckpointError(f"could not fetch {url}: HTTP {e.code} {e.reason}; {manual}") from None
        except urllib.error.URLError as e:
            raise CheckpointError(f"could not fetch {url}: {e.reason}; {manual}") from None
        except (TimeoutError, ConnectionError, HTTPException) as e:
            raise CheckpointError(f"could not fetch {url}: {_first_line(e)}; {manual}") from None
        except OSError as e:  # a socket/SSL error while reading, or the disk while writing
            raise CheckpointError(f"could not fetch {url} into {tmp}: {e.strerror or e}; {manual}") from None
        if total is not None and got != total:
            raise CheckpointError(f"could not fetch {url}: got {got} of {total} bytes; {manual}")
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None if it could escape the cache folder."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or name.startswith("/") or any(p == ".." or "\\" in p for p in parts):
        return None
    return PurePosixPath(*parts)


def _extract_member(archive: Path, member: str, out_dir: Path) -> Path:
    """Extract one regular-file member to a path built here (never from the archive's
    own name alone), so a hostile archive cannot write outside `out_dir`.

    `member` may omit the archive's top folder: `resnet32x4_vanilla/ckpt_epoch_240.pth`
    finds `cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth` if that is unique.
    """
    wanted = _safe_member_path(member)
    if wanted is None:
        raise CheckpointError(f"archive member {member!r} is not a plain relative path")
    dest = out_dir / wanted
    if dest.is_file():
        return dest
    try:
        with tarfile.open(archive) as tf:
            infos = [i for i in tf.getmembers() if i.isfile()]
            by_name = {p: i for i in infos if (p := _safe_member_path(i.name)) is not None}
            info = by_name.get(wanted)
            if info is None:
                tail = [
                    p
                    for p in by_name
                    if len(p.parts) > len(wanted.parts) and p.parts[-len(wanted.parts) :] == wanted.parts
                ]
                if len(tail) == 1:
                    info = by_name[tail[0]]
                elif len(tail) > 1:
                    raise CheckpointError(
                        f"archive {archive} has several members ending in {member}: {_names([str(t) for t in tail])}; "
                        "give the full member path"
                    )
            if info is None:
                pth = sorted(str(p) for p in by_name if p.suffix in (".pth", ".pt"))
                raise CheckpointError(
                    f"archive {archive} has no member {member}; its .pth members are: "
                    f"{', '.join(pth) if pth else 'none'}"
                )
            src = tf.extractfile(info)
            if src is None:  # pragma: no cover -- isfile() members always have data
                raise CheckpointError(f"archive {archive}: member {member} cannot be read")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
            try:
                with src, open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise
    except (tarfile.TarError, EOFError) as e:
        raise CheckpointError(f"{archive} is not a readable tar archive ({_first_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"could not extract {member} from {archive} into {out_dir}: {e.strerror or e}") from None
    return dest


def fetch_checkpoint(
    ref: str,
    cache_dir: str | os.PathLike[str],
    member: str | None = None,
    sha256: str | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Turn a checkpoint reference (local path or http(s) URL) into a local file path.

    URLs are downloaded once into `cache_dir` (named by a hash of the URL, so two
    URLs with the same basename never collide) and reused afterwards; the download
    goes to a temporary file first, so an interrupted one is never mistaken for a
    cached file. With `member`, `ref` is a tar archive (e.g. mdistiller's
    `cifar_teachers.tar`) and only that member is extracted, into the cache.
    `sha256`, when given, is checked against the file `ref` names (the archive,
    for a tar). This is the only function here that touches the network.
    """
    cache = Path(cache_dir).expanduser()
    if _is_url(ref):
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create the checkpoint cache {cache}: {e.strerror or e}") from None
        local = cache / _cache_name(ref)
        if not local.is_file():
            _download(ref, local, timeout, progress)
            try:
                _check_sha256(local, sha256, f"download of {ref}")
            except CheckpointError:
                local.unlink(missing_ok=True)  # never keep a bad file under the cache name
                raise
        else:
            _check_sha256(local, sha256, f"cached download {local} of {ref}")
        label = local.name
    else:
        local = Path(ref).expanduser()
        if not local.exists():
            raise CheckpointError(f"checkpoint {local} not found; check the path or give an http(s) URL")
        if not local.is_file():
            raise CheckpointError(f"checkpoint {local} is not a file")
        _check_sha256(local, sha256, f"checkpoint {local}")
        st = local.stat()  # a replaced local archive must not reuse a stale extraction
        ident = f"{local.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        label = f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}-{local.name}"
    if member is None:
        return local
    return _extract_member(local, member, cache / f"{label}.d")
