"""Who may use the page: logins from `--auth FILE` or CAPTIONING_UI_AUTH, the refusal of a public address
without one, the `--no-auth` warning, and that the login guards Gradio's API. No tritonserver needed: the
page starts against a port nobody listens on."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from captioning.ui import access

SENTENCE = "refusing to serve the page on '0.0.0.0' without a login"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ui(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "captioning.cli", "ui", "--url", "localhost:1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
    )


# -- the rules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("my-host.example", False),
        ("", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert access.is_loopback(host) is loopback


def test_credentials_file_format(tmp_path: Path) -> None:
    text = "# who may log in\n\nalice:pa:ss:word\n  bob : hunter2  \n# carol:old\n"
    assert access.parse_credentials(text, "F") == [("alice", "pa:ss:word"), ("bob", "hunter2")]
    path = tmp_path / "users"
    path.write_text(text)
    env = {access.AUTH_ENV: "eve:from-env"}
    assert access.load_credentials(str(path), env) == [("alice", "pa:ss:word"), ("bob", "hunter2")]
    assert access.load_credentials(None, env) == [("eve", "from-env")]
    assert access.load_credentials(None, {}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "line 1: expected user:password"),
        ("# only\nalice:\n", "line 2: expected user:password"),
        (":s3cret\n", "line 1: expected user:password"),
        ("alice:s3cret\nalice:s3cret2\n", "line 2: user 'alice' is listed twice"),
        ("# nobody\n\n", "no user:password line"),
    ],
)
def test_bad_credentials_are_named_without_the_password(text: str, message: str) -> None:
    with pytest.raises(access.AccessError) as exc:
        access.parse_credentials(text, "--auth users.txt")
    assert message in str(exc.value) and "s3cret" not in str(exc.value)


def test_unreadable_auth_file(tmp_path: Path) -> None:
    with pytest.raises(access.AccessError, match="cannot read it"):
        access.load_credentials(str(tmp_path / "missing"), {})


def test_exposure_rules() -> None:
    users = [("alice", "pw")]
    assert access.check_exposure("127.0.0.1", 7860, None, False) is None
    assert access.check_exposure("0.0.0.0", 7860, users, False) is None
    with pytest.raises(access.AccessError, match="--auth FILE") as exc:
        access.check_exposure("0.0.0.0", 7860, None, False)
    assert "--no-auth" in str(exc.value)
    warning = access.check_exposure("0.0.0.0", 7860, None, True)
    assert warning.startswith("WARNING:") and "anyone who can reach" in warning
    assert "can use this page and the server behind it" in warning
    with pytest.raises(access.AccessError, match="contradicts"):
        access.check_exposure("0.0.0.0", 7860, users, True)


def test_launch_itself_refuses_a_public_page_without_login() -> None:
    from captioning.ui.app import launch

    port = _free_port()
    with pytest.raises(access.AccessError, match="--no-auth"):
        launch("localhost:1", "0.0.0.0", port, block=False)
    assert not _listening(port)


def test_the_command_stops_before_the_page_starts(monkeypatch, capsys) -> None:
    from captioning import cli
    from captioning.ui import app

    monkeypatch.delenv(access.AUTH_ENV, raising=False)
    monkeypatch.setattr(app, "launch", lambda *a, **k: pytest.fail("the page was started"))
    assert cli.main(["ui", "--host", "0.0.0.0", "--url", "localhost:1"]) == 2
    assert SENTENCE in capsys.readouterr().err
    assert cli.main(["ui", "--serve", "--ssl"]) == 2
    assert "--serve starts its own server" in capsys.readouterr().err
    assert cli.main(["ui", "--root-cert", "/nonexistent/ca.pem"]) == 2
    assert "/nonexistent/ca.pem: no such file" in capsys.readouterr().err


def test_the_page_is_passed_the_transport_and_logins(monkeypatch, tmp_path: Path, capsys) -> None:
    from captioning import cli
    from captioning.client import Transport
    from captioning.ui import app

    users = tmp_path / "users"
    users.write_text("alice:s3cret\n")
    seen = {}
    monkeypatch.setattr(app, "launch", lambda url, host, port, **kw: seen.update(kw, url=url, host=host))
    argv = ["ui", "--host", "0.0.0.0", "--auth", str(users), "--url", "grpcs://h:1", "--header", "A: 1"]
    assert cli.main(argv) == 0
    assert seen == {
        "url": "grpcs://h:1",
        "host": "0.0.0.0",
        "transport": Transport(headers={"A": "1"}),
        "auth": [("alice", "s3cret")],
        "no_auth": False,
    }
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err and "login for 1 user(s)" in out.out


# -- the real command, as a process ------------------------------------------------------------------------
def test_public_host_without_auth_exits_at_once_without_a_port() -> None:
    port = _free_port()
    start = time.monotonic()
    proc = _ui("--host", "0.0.0.0", "--port", str(port), env={access.AUTH_ENV: ""})
    opened = False
    while proc.poll() is None and time.monotonic() - start < 30:
        opened = opened or _listening(port)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert SENTENCE in err and "--auth" in err and "--no-auth" in err and "Traceback" not in err
    assert not opened and "Running on" not in out
    assert time.monotonic() - start < 15


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def _wait_for(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not _listening(port):
        assert proc.poll() is None, "the page exited"
        assert time.monotonic() < deadline, "the page did not start"
        time.sleep(0.2)


@pytest.mark.slow
def test_no_auth_serves_publicly_with_a_loud_warning() -> None:
    port = _free_port()
    proc = _ui("--host", "0.0.0.0", "--no-auth", "--port", str(port), env={access.AUTH_ENV: ""})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        _wait_for(port, proc)
        err = ""
        while not lines.empty():
            err += lines.get()
        assert "WARNING:" in err and "anyone who can reach" in err
        assert "can use this page and the server behind it" in err
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as response:
            assert response.status == 200  # no login in the way
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _status(url: str, data: bytes | None = None, cookie: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, "; ".join(
                c.split(";")[0] for c in response.headers.get_all("Set-Cookie") or []
            )
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.slow
def test_the_login_guards_the_page_and_its_api() -> None:
    port = _free_port()
    proc = _ui("--port", str(port), env={access.AUTH_ENV: "alice:s3cret-pw"})
    try:
        _wait_for(port, proc)
        base = f"http://127.0.0.1:{port}"
        assert _status(f"{base}/config")[0] == 401
        join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
        assert _status(f"{base}/gradio_api/queue/join", join)[0] == 401
        wrong = urllib.parse.urlencode({"username": "alice", "password": "nope"}).encode()
        assert _status(f"{base}/login", wrong)[0] == 400
        right = urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}).encode()
        status, cookie = _status(f"{base}/login", right)
        assert status == 200 and cookie
        assert _status(f"{base}/config", cookie=cookie)[0] == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "s3cret-pw" not in out + err


def test_the_pages_actions_reach_the_server_with_its_transport(monkeypatch, tmp_path: Path) -> None:
    from captioning.client import ServerUnreachableError, Transport
    from captioning.ui import actions

    made = []

    class Recorder:
        def __init__(self, url, **kwargs) -> None:
            made.append((url, kwargs["transport"]))

        def __enter__(self):
            raise ServerUnreachableError("recorded, not sent")

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(actions, "CaptionClient", Recorder)
    transport = Transport(ssl=True, headers={"Authorization": "Bearer t"})
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG")
    assert "cannot be reached" in actions.caption_image("u", str(image), "Both", transport=transport)[3]
    assert "cannot be reached" in actions.translate_text("u", "a cat", transport=transport)[2]
    assert "cannot be reached" in actions.caption_many("u", [str(image)], transport=transport)[2]
    assert made == [("u", transport)] * 3
