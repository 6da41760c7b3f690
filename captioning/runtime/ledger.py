"""The door's state shared by one server's model processes: a small JSON file under an exclusive lock.

Triton runs each model instance in its own process: the door opens tickets in `image_preprocess` (and in the
translator for text), the last stage of each route closes them. Like the CPU slots (`runtime.cpu_slots`),
the file is scoped to the server process (the stubs' parent), so two servers on one machine never share one;
`remove_server_ledger` deletes it when the launcher stops its server. An operation reads, changes and writes
a few kilobytes: well under a millisecond against requests that take seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from captioning.runtime.door import DoorState

LOG = logging.getLogger(__name__)

LEDGER_DIR = Path("/dev/shm")  # nosec B108 # memory-backed, per machine; the name carries the server pid
PREFIX = "captioning-door-"


def ledger_path(scope: int | None = None, root: Path | None = None) -> Path:
    root = LEDGER_DIR if root is None else root
    base = root if root.is_dir() else Path("/tmp")  # nosec B108 # only where /dev/shm is missing
    return base / f"{PREFIX}{os.getppid() if scope is None else scope}.json"


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = fd

    @contextlib.contextmanager
    def state(self) -> Iterator[DoorState]:
        """The current state under the lock; what the block leaves in it is written back."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            state = self._read()
            yield state
            data = json.dumps(state.to_dict()).encode()
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, data)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _read(self) -> DoorState:
        os.lseek(self._fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(self._fd, 1 << 16):
            raw += chunk
        if not raw:
            return DoorState()
        try:
            return DoorState.from_dict(json.loads(raw))
        except (ValueError, TypeError):  # a torn write of a killed process: start measuring afresh
            LOG.warning("door ledger %s was unreadable; starting it afresh", self.path)
            return DoorState()

    def close(self) -> None:
        os.close(self._fd)


def remove_server_ledger(server_pid: int, root: Path | None = None) -> None:
    ledger_path(server_pid, root).unlink(missing_ok=True)
