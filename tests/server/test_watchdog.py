"""The stub watchdog sees a crash at once (a pidfd per stub, not a poll) and reloads with the admin key.

A stand-in stub: a child of this process whose command line is what Triton gives a Python-backend stub
(`triton_python_backend_stub <repository>/<model>/1/model.py ...`), and a stand-in repository API that records
what the watchdog posts. The real server's crash-and-recover test is in tests/integration/test_reliability.py.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time

from captioning import contract
from captioning.server.launcher import free_port
from captioning.server.watchdog import STUB, StubWatchdog, stub_models

KEY_HEADERS = {contract.ADMIN_KEY_HEADER: "k" * 32}


def _stub(tmp_path, model: str) -> subprocess.Popen:
    script = tmp_path / "repository" / model / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(600)\n")
    # exec -a: argv[0] names the stub binary, argv[1] the model's file, as Triton starts stubs
    command = f"exec -a {tmp_path / STUB} {sys.executable} {script}"
    return subprocess.Popen(["bash", "-c", command])


class _RepositoryApi(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[float, str, str | None]] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _RepositoryApi.posts.append(
            (time.monotonic(), self.path, self.headers.get(contract.ADMIN_KEY_HEADER))
        )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_killed_stub_is_reloaded_at_once_with_the_admin_key(tmp_path):
    port = free_port()
    api = http.server.ThreadingHTTPServer(("127.0.0.1", port), _RepositoryApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    stub = _stub(tmp_path, "caption_generator")
    try:
        deadline = time.monotonic() + 10
        while stub_models(os.getpid()).get("caption_generator") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # A poll interval far longer than the reaction measured below: only the pidfd can explain it.
        watchdog = StubWatchdog(os.getpid(), port, KEY_HEADERS, interval_s=30.0)
        assert watchdog.expected == {"caption_generator": 1}
        watchdog.start()
        time.sleep(0.3)  # it is waiting on the stub's pidfd now
        killed = time.monotonic()
        stub.send_signal(signal.SIGKILL)
        stub.wait()
        while len(_RepositoryApi.posts) < 2 and time.monotonic() - killed < 10:
            time.sleep(0.01)
        watchdog.stop()
    finally:
        if stub.poll() is None:
            stub.kill()
        api.shutdown()
    (unload_at, unload, unload_key), (_, load, load_key) = _RepositoryApi.posts[:2]
    assert (unload, load) == (
        "/v2/repository/models/caption_generator/unload",
        "/v2/repository/models/caption_generator/load",
    )
    assert unload_key == load_key == KEY_HEADERS[contract.ADMIN_KEY_HEADER]
    assert unload_at - killed < 1.0, f"the crash was seen after {unload_at - killed:.2f} s"
    assert watchdog.restarts and watchdog.restarts[0][1] == "caption_generator"
