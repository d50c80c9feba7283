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
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from richkd_deploy import faults
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


class _RecordingFile:
    """The temp file as handed to a writer: remembers the OSError of a failed write,
    whatever the writer turns it into."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


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
    recorder: _RecordingFile | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _RecordingFile(f)
            writer(recorder)  # type: ignore[arg-type]
            f.flush()
            faults.pause(f"write:{path}")
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch.save reports a failed write (EFBIG, ENOSPC) as a RuntimeError from its zip
        # writer; the OSError the file raised underneath is what the user needs to see.
        cause = exc if isinstance(exc, OSError) else recorder.error if recorder is not None else None
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        if cause.errno in (errno.EFBIG, errno.ENOSPC):
            reason += " (file too large or disk full)"
        raise RunError(f"could not write {path}: {reason}; the previous file (if any) is unchanged") from None
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


_HELD: set[Path] = set()  # run folders this process has locked (run_lock is re-entrant)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _in_use(root: Path, owner: dict[str, Any]) -> RunError:
    return RunError(f"run folder {root} is in use by another process ({owner.get('command', '?')}, pid "
                    f"{owner.get('pid', '?')}); wait for it to finish or use another --run-dir")


def sweep_stale_temp_files(root: Path) -> int:
    """Delete the temp files of writes that never finished (`.<name>.<random>.tmp`, left
    by a process killed mid-write); returns how many. Only called under the run lock,
    when no other process can be writing in this run folder, so every such file is
    garbage. Export staging folders are the exporter's own business and stay."""
    removed = 0
    for path in root.rglob(".*.tmp"):
        if any(part.startswith(".staging") for part in path.relative_to(root).parts[:-1]):
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def run_lock(root: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on a run folder for the duration of `command`.

    The lock is an advisory `flock` on `RUN/.lock`, which also records the owner's pid
    and command for the refusal message. The kernel drops the lock when its holder
    dies, however it dies (SIGKILL, OOM), so a crash never leaves a run stuck, not even
    when the dead holder's pid has since been reused by another process. Where the
    filesystem has no `flock`, a lock file whose pid no longer exists is taken over.
    """
    root.mkdir(parents=True, exist_ok=True)
    lock = RunDir(root).lock
    key = root.resolve()
    if key in _HELD:  # a nested call in the process that already holds it
        yield
        return
    for _attempt in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunError(f"run folder {root} is not writable ({exc.strerror}); choose another --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise _in_use(root, owner) from None
        except OSError:  # no flock here (some network filesystems): fall back to the recorded pid
            owner = _read_owner(fd)
            pid = int(owner.get("pid", 0) or 0) if str(owner.get("pid", "")).isdigit() else 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                os.close(fd)
                raise _in_use(root, owner) from None
        try:  # a holder that was releasing may have unlinked the file we opened: lock the one on disk
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(os.fstat(fd), current):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command}).encode())
        break
    else:
        raise RunError(f"could not lock run folder {root}; remove {lock} if no richkd-deploy process is running")
    _HELD.add(key)
    sweep_stale_temp_files(root)
    try:
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: the next run locks a fresh file
        os.close(fd)


def check_writable(root: Path) -> None:
    """Fail early, before any work, when the run folder cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"run folder {root} is not writable ({exc.strerror}); choose another --run-dir") from None
