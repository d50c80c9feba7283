"""Exit 0 when open_clip can load MODEL with pretrained TAG here (cached, or downloaded
within a time limit), 1 otherwise. `make demo` uses it to decide whether to fall back
to explicitly allowed random CLIP weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

# Where open_clip downloads the openai weights from (its hf_hub entry, then its url).
HOSTS = ("huggingface.co", "openaipublic.azureedge.net")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
LOAD = "import open_clip, sys; open_clip.create_model(sys.argv[1], pretrained=sys.argv[2])"


def loads(model: str, tag: str, offline: bool, timeout: float) -> bool:
    env = dict(os.environ, HF_HUB_OFFLINE="1" if offline else "0")
    try:
        return subprocess.run([sys.executable, "-c", LOAD, model, tag], env=env, timeout=timeout,
                              capture_output=True).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def network_may_reach(hosts: tuple[str, ...] = HOSTS, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether a download could work: a direct TCP connection to one of the hosts opens,
    or a proxy is configured (then only the download itself can tell). Without a
    network, open_clip's download retries for about a minute before it fails: a minute
    of the demo's ten spent waiting for nothing."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    for host in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


if __name__ == "__main__":
    model, tag = sys.argv[1], sys.argv[2]
    ok = loads(model, tag, offline=True, timeout=120) or (network_may_reach()
                                                          and loads(model, tag, offline=False, timeout=90))
    sys.exit(0 if ok else 1)
