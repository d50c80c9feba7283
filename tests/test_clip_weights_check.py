"""scripts/clip_weights_available.py: offline, the demo no longer waits a minute for
open_clip's download retries before falling back to random CLIP."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "clip_weights_available.py"


@pytest.fixture()
def check(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("clip_weights_available", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_listening_host_is_reachable(check):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert check.network_may_reach(("127.0.0.1",), port=server.getsockname()[1], timeout=2)


def test_no_host_answering_is_said_at_once(check):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    assert not check.network_may_reach(("127.0.0.1", "no-such-host.invalid"), port=port, timeout=2)
    assert time.perf_counter() - t0 < 5


def test_a_proxy_leaves_the_answer_to_the_download(check, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert check.network_may_reach(("no-such-host.invalid",), port=443, timeout=1)
