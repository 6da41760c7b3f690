"""Resident memory of a served repository's processes: sampled for the soak's curves, and as peaks per bench row.

A full-size repository at concurrency 16 needs most of a small machine's memory (a bench run once lost a
generator stub to the kernel's OOM killer), so every measured row records what each process peaked at: the
figure to size a node or a container limit by. Stubs are looked up at every sample, so a model the watchdog
reloaded is still counted.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple


class Memory(NamedTuple):
    """One process's memory in KiB (None once it ended). `shmem` is mostly the Python backend's tensor pool
    (`/dev/shm`, mapped by tritonserver and the stub alike), which grows with the requests in flight. `anon` is
    private anonymous memory (heap, ONNX Runtime's arena, numpy arrays): what a leak would grow. The rest of
    resident memory is file-backed (libraries, mapped models), which the kernel drops and reloads under memory
    pressure, so it moves without the process doing anything."""

    rss: int | None
    shmem: int | None
    anon: int | None


def memory_kib(pid: int) -> Memory:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssShmem", "RssAnon"):
                fields[key] = int(value.split()[0])
    except OSError:
        return Memory(None, None, None)
    return Memory(fields.get("VmRSS"), fields.get("RssShmem"), fields.get("RssAnon"))


class PeakMemory(threading.Thread):
    """Peak resident MiB per model (the largest of its instances) and of all the server's processes together,
    while the `with` block runs."""

    def __init__(self, server_pid: int, every_s: float = 1.0) -> None:
        super().__init__(name="bench-memory", daemon=True)
        self.server_pid, self.every_s = server_pid, every_s
        self.peaks: dict[str, float] = {}
        self.total = 0.0
        self._halt = threading.Event()

    def sample(self) -> None:
        from captioning.server.watchdog import stub_processes

        processes = {self.server_pid: "tritonserver", **stub_processes(self.server_pid)}
        total = 0.0
        for pid, name in processes.items():
            rss = memory_kib(pid).rss
            if rss is None:
                continue  # it ended while we looked
            total += rss / 1024
            self.peaks[name] = max(self.peaks.get(name, 0.0), rss / 1024)
        self.total = max(self.total, total)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def result(self) -> dict:
        return {
            "total_mib": round(self.total, 1),
            "per_model_mib": {k: round(v, 1) for k, v in self.peaks.items()},
        }
