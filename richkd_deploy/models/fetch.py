"""Fetching checkpoints: a local path or an http(s) URL (optionally a tar member) to a
local file, cached, sha256-checked and never half-written.

Kept apart from `models.checkpoint` (strict, safe loading): this is the only module of
the package that touches the network, so a reader can audit that in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from richkd_deploy.errors import CheckpointError
from richkd_deploy.models.checkpoint import _first_line, _names
from richkd_deploy.runs import sha256_file


def _is_url(ref: str) -> bool:
    return urllib.parse.urlsplit(ref).scheme.lower() in ("http", "https")


def _check_sha256(path: Path, sha256: str | None, what: str) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
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
