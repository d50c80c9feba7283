"""Run folders, atomic writes, hashing and the per-run lock.

Every file the toolkit produces goes through `atomic_write_*`: it is written to a
temporary name in the same folder, flushed to disk and renamed, so a crash, a kill
or a full disk leaves either the old file or the new one under the final name,
never half of one. A run folder is locked while a command writes to it, so two
processes cannot interleave checkpoints or exports.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from richkd_deploy.errors import RunError

DEFAULT_RUNS_ROOT = Path("runs")
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class RunDir:
    """The fixed layout of one run; paths only, nothing is created here."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher(self) -> Path:
        return self.teacher_dir / "teacher.pt"

    @property
    def student(self) -> Path:
        return self.root / "student.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def clip_dir(self) -> Path:
        return self.root / "clip"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def manifest(self) -> Path:
        return self.export_dir / "manifest.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def newest_run(runs_root: Path = DEFAULT_RUNS_ROOT, require: str = "student.pt") -> Path:
    """The most recently modified run under `runs_root` that holds `require`."""
    if not runs_root.is_dir():
        raise RunError(f"no runs under {runs_root.resolve()}: train one first (richkd-deploy train RECIPE) or pass RUN")
    candidates = [p for p in runs_root.iterdir() if p.is_dir() and (p / require).exists()]
    if not candidates:
        raise RunError(f"no run under {runs_root.resolve()} has {require}: train one first or pass RUN")
    return max(candidates, key=lambda p: (p / require).stat().st_mtime)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable; best effort (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through `writer(file)` via a temp file + rename.

    On any failure (an exception in `writer`, a full disk, a file-size limit) the temp
    file is removed, the previous file at `path` is untouched, and a RunError names the
    path and the OS error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = "file too large or disk full" if exc.errno in (errno.EFBIG, errno.ENOSPC) else (exc.strerror or str(exc))
        raise RunError(f"could not write {path}: {reason}; the previous file (if any) is unchanged") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(src: Path, dst: Path) -> Path:
    def copy(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            while block := s.read(1 << 20):
                f.write(block)
    return atomic_write(dst, copy)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(root: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on a run folder for the duration of `command`.

    The lock is an `O_EXCL` file holding the owner's pid; a lock left by a process
    that no longer exists (killed with SIGKILL) is taken over, so a crash never
    leaves a run stuck.
    """
    root.mkdir(parents=True, exist_ok=True)
    lock = RunDir(root).lock
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            pid = int(owner.get("pid", 0) or 0)
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise RunError(
                    f"run folder {root} is in use by another process ({owner.get('command', '?')}, pid {pid}); "
                    "wait for it to finish or use another --run-dir") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise RunError(f"run folder {root} is not writable ({exc.strerror}); choose another --run-dir") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "command": command}, f)
        break
    else:
        raise RunError(f"could not lock run folder {root}; remove {lock} if no richkd-deploy process is running")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()


def check_writable(root: Path) -> None:
    """Fail early, before any work, when the run folder cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"run folder {root} is not writable ({exc.strerror}); choose another --run-dir") from None
