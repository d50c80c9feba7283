"""fetch_checkpoint against a throw-away HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from richkd_deploy.errors import CheckpointError
from richkd_deploy.models import create_model, fetch_checkpoint, load_checkpoint, load_state_dict_strict

MEMBER = "resnet8_vanilla/ckpt_epoch_240.pth"


class _Server:
    """Serves `files` (path -> bytes) and counts the GET requests per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.short: set[str] = set()  # paths that announce more bytes than they send
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (100 if self.path in server.short else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> _Server:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server() as s:
        yield s


@pytest.fixture(scope="module")
def teacher_bytes() -> bytes:
    buf = io.BytesIO()
    torch.manual_seed(3)
    torch.save({"epoch": 240, "model": create_model("resnet8").state_dict()}, buf)
    return buf.getvalue()


def _tar(members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


def test_download_once_then_cache(server: _Server, tmp_path: Path, teacher_bytes: bytes) -> None:
    server.files["/ckpts/resnet8.pth"] = teacher_bytes
    url = f"{server.url}/ckpts/resnet8.pth"
    first = fetch_checkpoint(url, tmp_path / "cache", progress=False)
    assert first.read_bytes() == teacher_bytes and first.name.endswith("-resnet8.pth")
    second = fetch_checkpoint(url, tmp_path / "cache", sha256=hashlib.sha256(teacher_bytes).hexdigest(), progress=False)
    assert second == first
    assert server.hits == {"/ckpts/resnet8.pth": 1}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.name]  # no temp files left
    load_state_dict_strict(create_model("resnet8"), load_checkpoint(second), source=url)


def test_tar_member_like_cifar_teachers(server: _Server, tmp_path: Path, teacher_bytes: bytes) -> None:
    """mdistiller's cifar_teachers.tar keeps `<arch>_vanilla/ckpt_epoch_240.pth` under a top folder."""
    server.files["/cifar_teachers.tar"] = _tar(
        {f"cifar_teachers/{MEMBER}": teacher_bytes, "cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth": b"x"}
    )
    url = f"{server.url}/cifar_teachers.tar"
    cache = tmp_path / "cache"
    path = fetch_checkpoint(url, cache, member=MEMBER, progress=False)
    assert path.read_bytes() == teacher_bytes
    assert path.is_relative_to(cache) and path.parts[-2:] == tuple(MEMBER.split("/"))
    again = fetch_checkpoint(url, cache, member=f"cifar_teachers/{MEMBER}", progress=False)
    assert again.read_bytes() == teacher_bytes
    assert server.hits == {"/cifar_teachers.tar": 1}

    with pytest.raises(CheckpointError) as info:
        fetch_checkpoint(url, cache, member="resnet32x4_vanilla/ckpt_epoch_240.pth", progress=False)
    msg = str(info.value)
    assert "has no member resnet32x4_vanilla/ckpt_epoch_240.pth" in msg
    assert f"cifar_teachers/{MEMBER}" in msg and "vgg13_vanilla/ckpt_epoch_240.pth" in msg
    assert server.hits == {"/cifar_teachers.tar": 1}


def test_tar_member_from_a_local_archive(tmp_path: Path, teacher_bytes: bytes) -> None:
    archive = tmp_path / "teachers.tar"
    archive.write_bytes(_tar({MEMBER: teacher_bytes}))
    path = fetch_checkpoint(str(archive), tmp_path / "cache", member=MEMBER, progress=False)
    assert path.read_bytes() == teacher_bytes


def test_hostile_archive_cannot_escape_the_cache(tmp_path: Path) -> None:
    link = tarfile.TarInfo("evil/link.pth")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar({"../../escape.pth": b"boom", "/abs/escape.pth": b"boom"}, [link]))
    cache = tmp_path / "deep" / "cache"
    for member in ("../../escape.pth", "/abs/escape.pth"):
        with pytest.raises(CheckpointError, match="not a plain relative path"):
            fetch_checkpoint(str(archive), cache, member=member, progress=False)
    with pytest.raises(CheckpointError, match="has no member evil/link.pth"):  # links are never followed
        fetch_checkpoint(str(archive), cache, member="evil/link.pth", progress=False)
    assert not (tmp_path / "escape.pth").exists() and not (tmp_path / "deep" / "escape.pth").exists()


def test_local_path(tmp_path: Path, teacher_bytes: bytes) -> None:
    path = tmp_path / "t.pth"
    path.write_bytes(teacher_bytes)
    assert fetch_checkpoint(str(path), tmp_path / "cache") == path
    with pytest.raises(CheckpointError, match=r"missing\.pth not found"):
        fetch_checkpoint(str(tmp_path / "missing.pth"), tmp_path / "cache")
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_checkpoint(str(path), tmp_path / "cache", sha256="0" * 64)


def test_http_errors(server: _Server, tmp_path: Path, teacher_bytes: bytes) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="could not fetch .*HTTP 404.*download it by hand"):
        fetch_checkpoint(f"{server.url}/missing.pth", cache, progress=False)

    server.files["/short.pth"] = teacher_bytes
    server.short.add("/short.pth")
    with pytest.raises(CheckpointError, match="could not fetch"):
        fetch_checkpoint(f"{server.url}/short.pth", cache, progress=False, timeout=5)

    server.files["/ok.pth"] = teacher_bytes
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_checkpoint(f"{server.url}/ok.pth", cache, sha256="f" * 64, progress=False)
    assert list(cache.iterdir()) == []  # neither partial nor unverified files are cached


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError) as info:
        fetch_checkpoint(f"http://127.0.0.1:{port}/x.pth", tmp_path / "cache", timeout=5, progress=False)
    msg = str(info.value)
    assert f"could not fetch http://127.0.0.1:{port}/x.pth" in msg
    assert "download it by hand and set the local path" in msg and "\n" not in msg
