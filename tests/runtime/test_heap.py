"""captioning.runtime.heap: the malloc thresholds every Python-backend model sets in `initialize`."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
import types

import pytest

from captioning.runtime import heap

GLIBC = platform.libc_ver()[0] == "glibc"

# Each iteration allocates 24 arrays of 0.7 MiB and frees them, as a decoder step does with its KV-cache outputs
# (one per layer); prints the minor page faults of the measured iterations.
_PROBE = """
import json, resource
import numpy as np
from captioning.runtime.heap import keep_heap
applied = keep_heap()
source = np.ones(184_320, dtype=np.float32)
def step():
    return sum(float(part[-1]) for part in [source * 2 for _ in range(24)])
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(switch: str) -> dict:
    env = {**os.environ, heap.ENV_SWITCH: switch}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_keep_heap_stops_page_faults_on_repeated_large_arrays():
    default, kept = _probe("0"), _probe("1")
    assert default["applied"] is False and kept["applied"] is True
    # Under glibc's defaults the freed 17 MiB goes back to the kernel and 20 steps fault ~4,000 pages each;
    # from the kept heap, almost none.
    assert default["faults"] > 20_000, default
    assert kept["faults"] < 500, kept


def test_keep_heap_is_off_when_switched_off(monkeypatch):
    monkeypatch.setenv(heap.ENV_SWITCH, "off")
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: pytest.fail("libc must not be touched"))
    assert heap.keep_heap() is False


def test_keep_heap_without_glibc_is_harmless(monkeypatch):
    def missing(*args, **kwargs):
        raise OSError("no libc here")

    monkeypatch.delenv(heap.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert heap.keep_heap() is False


def test_keep_heap_reports_glibc_refusing(monkeypatch):
    def refusing_mallopt(param, value):
        return 0  # what glibc returns for a value it will not take

    monkeypatch.delenv(heap.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: types.SimpleNamespace(mallopt=refusing_mallopt))
    assert heap.keep_heap() is False
