"""CPU slots: at most N graph runs at once across all model processes of one Triton server.

Triton runs each model instance in its own process. The throughput layout (`--intra-op-threads 1`, two instances
of the slowest stages) has five single-threaded ONNX Runtime processes on a 2-core machine, and at high load four
or five of them are runnable at once. The kernel then time-slices them every few milliseconds, and each slice
evicts the caches the other runs had filled: the vision graph cost 1.46 core-seconds per image served against 1.2
in-process (docs/performance.md). A slot is a counting semaphore shared by the server's model processes: a graph
run (one decoder step, one vision batch) takes a slot, runs on a core of its own, and gives it back, so at most
N runs share the N cores and the rest wait without running. Triton's own rate limiter does this per `execute`
call, which holds a generator's slot for a whole decode; per graph run, the stages interleave step by step.

The semaphore is a named POSIX semaphore scoped to the server process (the stubs' parent), so two servers on one
machine never share one. Waiting is bounded: a slot lost with a crashed process costs parallelism, never a hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger(__name__)

PARAMETER = "cpu_slots"
WAIT_LIMIT_S = 60.0  # then run anyway: a run must never hang on a slot a crashed process took with it
# Where glibc keeps named POSIX semaphores (sem_open's "/name" is the file sem.name here). Nothing is created in
# it by path; `remove_server_slots` only unlinks this server's own sem.captioning-cpu-slots-<pid>-* names.
SEMAPHORE_DIR = Path("/dev/shm")  # nosec B108 # sem_open's namespace, not a temp dir; no file made by path


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def parse_slots(value: str | int | None) -> int:
    """`auto`: the cores this process may run on; an int >= 0 (0 turns slots off)."""
    if value is None or value == "":
        return 0
    if str(value).strip().lower() == "auto":
        if hasattr(os, "sched_getaffinity"):  # the cores this process may use (containers, taskset)
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    count = int(value)
    if count < 0:
        raise ValueError(f"{PARAMETER} must be 'auto' or an int >= 0, got {value!r}")
    return count


class CpuSlots:
    """A named counting semaphore; `held()` brackets one graph run."""

    def __init__(self, count: int, scope: int | None = None) -> None:
        if count < 1:
            raise ValueError(f"need at least one slot, got {count}")
        self.name = f"/captioning-cpu-slots-{os.getppid() if scope is None else scope}-{count}".encode()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.sem_open.restype = ctypes.c_void_p
        libc.sem_open.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint)
        for name in ("sem_wait", "sem_post", "sem_close"):
            getattr(libc, name).argtypes = (ctypes.c_void_p,)
        libc.sem_timedwait.argtypes = (ctypes.c_void_p, ctypes.POINTER(_Timespec))
        handle = libc.sem_open(self.name, os.O_CREAT, 0o600, count)
        if handle in (None, ctypes.c_void_p(-1).value):  # SEM_FAILED
            err = ctypes.get_errno()
            raise OSError(err, f"sem_open({self.name.decode()}): {os.strerror(err)}")
        self._libc, self._sem = libc, handle

    def acquire(self, timeout_s: float = WAIT_LIMIT_S) -> bool:
        """True once a slot is taken; False if none came free within `timeout_s` (the caller runs anyway)."""
        deadline = time.time() + timeout_s
        spec = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        while self._libc.sem_timedwait(self._sem, ctypes.byref(spec)) != 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:  # a signal: wait on
                continue
            if err == errno.ETIMEDOUT:
                return False
            raise OSError(err, f"sem_timedwait: {os.strerror(err)}")
        return True

    def release(self) -> None:
        self._libc.sem_post(self._sem)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        taken = self.acquire()
        if not taken:
            LOG.warning("no CPU slot came free in %.0f s; running without one", WAIT_LIMIT_S)
        try:
            yield
        finally:
            if taken:
                self.release()

    def close(self) -> None:
        """Drop this process's handle; the name stays for the server's other models (`remove_server_slots`)."""
        if self._sem is not None:
            self._libc.sem_close(self._sem)
            self._sem = None


def remove_server_slots(server_pid: int, shm: Path = SEMAPHORE_DIR) -> None:
    """Unlink the semaphores a stopped server's models created: like files, they outlive their processes.
    (Not done by the models themselves: one model reloading would split the others' count.)"""
    for path in shm.glob(f"sem.captioning-cpu-slots-{server_pid}-*"):
        path.unlink(missing_ok=True)


_ACTIVE: CpuSlots | None = None


def install(value: str | int | None) -> CpuSlots | None:
    """Process-wide slots from the `cpu_slots` model parameter (each Triton stub hosts one model instance, so
    this is a per-instance setting, like the intra-op thread count)."""
    global _ACTIVE
    count = parse_slots(value)
    if count == 0:
        return None
    _ACTIVE = CpuSlots(count)
    LOG.info("graph runs take one of %d CPU slots shared by this server's models", count)
    return _ACTIVE


def held() -> contextlib.AbstractContextManager[None]:
    return _ACTIVE.held() if _ACTIVE is not None else contextlib.nullcontext()
