"""CPU slots: a counting semaphore shared across processes, scoped per server, bounded waits."""

import multiprocessing
import os
from pathlib import Path

import pytest

from captioning.runtime import cpu_slots
from captioning.runtime.cpu_slots import CpuSlots, parse_slots, remove_server_slots

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX named semaphores live in /dev/shm on Linux")


@pytest.fixture
def scope():
    """A scope no server uses (this test process's pid, which no stub has as its parent), cleaned up after."""
    yield os.getpid()
    remove_server_slots(os.getpid())


def test_parse_slots():
    assert parse_slots(None) == parse_slots("") == parse_slots("0") == 0
    assert parse_slots("3") == parse_slots(3) == 3
    assert parse_slots("auto") == parse_slots(" AUTO ") == len(os.sched_getaffinity(0))
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError):
            parse_slots(bad)


def test_slots_count_and_release(scope):
    slots = CpuSlots(2, scope=scope)
    assert slots.acquire() and slots.acquire()
    assert not slots.acquire(timeout_s=0.1)  # both taken: the wait is bounded, not a hang
    slots.release()
    assert slots.acquire(timeout_s=0.1)
    slots.release()
    slots.release()
    slots.close()


def _try_acquire(scope: int, queue) -> None:
    queue.put(CpuSlots(1, scope=scope).acquire(timeout_s=0.3))


def test_slots_are_shared_between_processes_of_one_scope(scope):
    held = CpuSlots(1, scope=scope)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()

    def attempt() -> bool:
        child = ctx.Process(target=_try_acquire, args=(scope, queue))
        child.start()
        child.join(30)
        return queue.get(timeout=5)

    assert held.acquire()
    assert attempt() is False  # another process of the same server waits while the slot is held
    held.release()
    assert attempt() is True
    # that child exited holding the slot: a lost slot, which the next waiter sees as a timeout, not a hang
    assert held.acquire(timeout_s=0.1) is False
    other = CpuSlots(1, scope=scope + 1)  # another server: its own semaphore
    assert other.acquire(timeout_s=0.1)
    other.release()
    remove_server_slots(scope + 1)


def test_held_without_install_is_a_no_op(scope):
    assert cpu_slots.install("0") is None
    with cpu_slots.held():
        pass


def test_held_takes_a_slot_when_installed(monkeypatch, scope):
    monkeypatch.setattr(os, "getppid", lambda: scope)
    active = cpu_slots.install("1")
    try:
        assert active is not None and (SHM / f"sem.captioning-cpu-slots-{scope}-1").exists()
        probe = CpuSlots(1, scope=scope)
        with cpu_slots.held():
            assert not probe.acquire(timeout_s=0.1)
        assert probe.acquire(timeout_s=0.1)
        probe.release()
    finally:
        monkeypatch.setattr(cpu_slots, "_ACTIVE", None)
    remove_server_slots(scope)
    assert not list(SHM.glob(f"sem.captioning-cpu-slots-{scope}-*"))


def test_remove_server_slots_only_touches_that_server(tmp_path):
    names = [
        "sem.captioning-cpu-slots-41-2",
        "sem.captioning-cpu-slots-41-1",
        "sem.captioning-cpu-slots-411-2",
    ]
    for name in names:
        (tmp_path / name).touch()
    remove_server_slots(41, shm=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sem.captioning-cpu-slots-411-2"]
