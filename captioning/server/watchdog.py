"""Restart a Python-backend model whose stub process died, and keep readiness honest meanwhile.

Triton 2.51 does not restart a dead stub: every request to that model fails with "Stub process ... is not
healthy" while `/v2/health/ready` and the model's readiness still answer true (server#7230), and shutdown waits
its whole exit timeout for the dead instance. The launcher starts the server in explicit model-control mode and
runs this watchdog beside it: it holds a pidfd on each stub process (children of tritonserver, one per model
instance, whose command line names the model's directory) and, the moment one exits, reloads that model through
Triton's repository API, with the admin key. While the model reloads it is not ready, so strict readiness answers 503 until it serves again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

LOG = logging.getLogger(__name__)
STUB = "triton_python_backend_stub"


def stub_processes(server_pid: int) -> dict[int, str]:
    """Live stub processes of this server: pid -> model name."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if parent == server_pid and argv[0].endswith(STUB.encode()) and len(argv) > 1:
            # argv[1] is <repository>/<model>/<version>/model.py; zombies have an empty command line
            stubs[int(entry.name)] = Path(argv[1].decode()).parts[-3]
    return stubs


def stub_models(server_pid: int) -> Counter:
    """Live stub processes of this server, counted by model name."""
    return Counter(stub_processes(server_pid).values())


class StubWatchdog(threading.Thread):
    """Polls the server's stubs; reloads a model whose stub count fell. Stops with `stop()`."""

    def __init__(
        self,
        server_pid: int,
        http_port: int,
        admin_headers: dict[str, str],
        host: str = "127.0.0.1",
        interval_s: float = 0.5,
    ) -> None:
        super().__init__(name="stub-watchdog", daemon=True)
        self.server_pid, self.http_port, self.interval_s = server_pid, http_port, interval_s
        # The repository API is restricted to the admin key (captioning/server/security.py).
        self.host, self.admin_headers = host, dict(admin_headers)
        self.expected = stub_models(server_pid)
        self.restarts: list[tuple[float, str]] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self.wait_for_a_death(self.interval_s)
            live = stub_models(self.server_pid)
            for model, count in self.expected.items():
                if live.get(model, 0) < count and not self._halt.is_set():
                    self._reload(model, count - live.get(model, 0))

    def wait_for_a_death(self, timeout_s: float) -> bool:
        """Block until a stub exits (a pidfd per stub, so a crash is seen at once rather than at the next
        poll: the window in which readiness still says yes shrinks from the poll interval to the reload's own
        latency) or `timeout_s` passes, when new stubs are picked up. True when one exited."""
        fds = []
        for pid in stub_processes(self.server_pid):
            with contextlib.suppress(OSError):  # gone already: the scan after this wait sees it
                fds.append(os.pidfd_open(pid))
        try:
            if not fds:
                self._halt.wait(timeout_s)
                return False
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            return bool(poller.poll(timeout_s * 1000))
        finally:
            for fd in fds:
                os.close(fd)

    def _reload(self, model: str, lost: int) -> None:
        LOG.warning("%d stub process(es) of model %s died; reloading it", lost, model)
        started = time.monotonic()
        try:
            # `load` alone is a no-op for a model whose files did not change: unload it first.
            self._post(f"{model}/unload")
            self._post(f"{model}/load")
        except (urllib.error.URLError, OSError) as exc:
            LOG.error("reloading model %s failed: %s", model, exc)
            return
        self.restarts.append((time.time(), model))
        LOG.warning("model %s serves again after %.1f s", model, time.monotonic() - started)

    def _post(self, path: str) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.http_port}/v2/repository/models/{path}"
        request = urllib.request.Request(url, data=b"{}", method="POST", headers=self.admin_headers)
        with urllib.request.urlopen(request, timeout=600):  # nosec B310 # an http:// URL built here
            pass
