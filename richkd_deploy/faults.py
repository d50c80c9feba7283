"""Test-only fault points: stop the process at a named moment so a test can SIGKILL it there.

Killing a process "during a checkpoint write" or "during the CLIP cache build" by
timing alone is luck; the reliability tests instead set

    RICHKD_FAULT_PAUSE=<pattern>[#<n>]

and the process, on the n-th (default first) call of `pause(point)` whose point
matches the shell-style `pattern` (fnmatch), prints `RICHKD_FAULT_PAUSED <point>`
on stderr and sleeps until it is killed. The points are:

- `step:<stage>`        after each optimiser step (`teacher`, `student`): mid-epoch
- `write:<path>`        inside every atomic write, after the data went to the
                        temporary file and before the rename (a checkpoint, an
                        artifact or a manifest half-way through its commit)
- `clip-cache:batch`    after each batch of the CLIP target cache build (and of each shard)
- `validate:rank<r>`    before rank r of a distributed validate shares its logits

Unset (always, outside the tests) `pause` is one dictionary lookup.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time

ENV = "RICHKD_FAULT_PAUSE"
MARKER = "RICHKD_FAULT_PAUSED"
_hits = 0


def pause(point: str) -> None:
    """Sleep forever at `point` when RICHKD_FAULT_PAUSE selects it (see the module doc)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    global _hits
    pattern, _, nth = spec.partition("#")
    if not fnmatch.fnmatchcase(point, pattern):
        return
    _hits += 1
    if _hits != (int(nth) if nth else 1):
        return
    print(f"{MARKER} {point}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
