"""The control plane is closed on every command line the launcher writes; the key is the operator's or random,
never logged; ports listen on loopback unless opened; gRPC TLS is opt-in. The real server: tests/integration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from captioning import contract
from captioning.server.launcher import ServerOptions, TritonServer, command
from captioning.server.security import AdminKey, GrpcTls, SecurityError, resolve_admin_key

KEY = "k" * 20 + "-operator.key_0123"


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_every_command_line_restricts_the_control_plane(tmp_path):
    for options in (ServerOptions(repository=tmp_path), ServerOptions(repository=tmp_path, watchdog=False)):
        args, _ = command(options)
        for flag in ("http-restricted-api", "grpc-restricted-protocol"):
            apis, grant = _flag(args, flag).split(":", 1)
            assert set(apis.split(",")) == {"model-repository", "shared-memory", "trace", "logging"}
            header, value = grant.split("=", 1)
            assert header == contract.ADMIN_KEY_HEADER and len(value) >= 32
            assert not {"inference", "health", "metadata", "model-config", "statistics"} & set(
                apis.split(",")
            )


def test_a_random_key_per_start_unless_the_operator_gives_one(tmp_path):
    first, _ = command(ServerOptions(repository=tmp_path))
    second, _ = command(ServerOptions(repository=tmp_path))
    assert _flag(first, "http-restricted-api") != _flag(second, "http-restricted-api")
    given, _ = command(ServerOptions(repository=tmp_path, admin_key=AdminKey(KEY, "test")))
    assert _flag(given, "http-restricted-api").endswith(f"={KEY}")


def test_ports_listen_on_loopback_unless_opened(tmp_path):
    args, _ = command(ServerOptions(repository=tmp_path))
    assert {_flag(args, f"{p}-address") for p in ("http", "grpc", "metrics")} == {"127.0.0.1"}
    args, _ = command(ServerOptions(repository=tmp_path, host="0.0.0.0"))
    assert {_flag(args, f"{p}-address") for p in ("http", "grpc", "metrics")} == {"0.0.0.0"}
    assert ServerOptions(repository=tmp_path, host="0.0.0.0").local_host == "127.0.0.1"


def test_serve_binds_loopback_and_node_start_every_address():
    from captioning.cli import build_parser
    from captioning.server.commands import access_options

    parser = build_parser()
    assert access_options(parser.parse_args(["serve", "--repository", "r"]))["host"] == "127.0.0.1"
    assert access_options(parser.parse_args(["serve", "--host", "0.0.0.0"]))["host"] == "0.0.0.0"
    assert access_options(parser.parse_args(["node-start"]))["host"] == "0.0.0.0"


def test_the_key_comes_from_a_file_then_the_environment(tmp_path):
    path = tmp_path / "admin-key"
    path.write_text(KEY + "\n")
    assert resolve_admin_key(path, {}).value == KEY
    assert resolve_admin_key(None, {"CAPTIONING_ADMIN_KEY_FILE": str(path)}).value == KEY
    assert resolve_admin_key(None, {"CAPTIONING_ADMIN_KEY": KEY}).source == "$CAPTIONING_ADMIN_KEY"
    assert resolve_admin_key(None, {}).source == "generated"
    operator = resolve_admin_key(None, {"CAPTIONING_ADMIN_KEY": KEY})
    assert operator.headers == {contract.ADMIN_KEY_HEADER: KEY}
    assert operator.grpc_headers == {"triton-grpc-protocol-" + contract.ADMIN_KEY_HEADER: KEY}


@pytest.mark.parametrize("bad", ["short", "has space in it and more", "a,b:c=d" * 4])
def test_a_key_that_cannot_travel_in_the_flag_is_refused_without_echoing_it(bad):
    with pytest.raises(SecurityError) as caught:
        resolve_admin_key(None, {"CAPTIONING_ADMIN_KEY": bad})
    assert "CAPTIONING_ADMIN_KEY" in str(caught.value) and bad not in str(caught.value)


def test_a_missing_key_file_is_named_or_closes_the_control_plane(tmp_path):
    with pytest.raises(SecurityError, match="admin key file .*missing"):
        resolve_admin_key(tmp_path / "missing", {})  # the operator named it: a typo must not pass silently
    # An optional Kubernetes Secret that was never created: random key, nobody can administer the server.
    assert (
        resolve_admin_key(None, {"CAPTIONING_ADMIN_KEY_FILE": str(tmp_path / "missing")}).source
        == "generated"
    )


def test_the_key_is_never_logged(tmp_path, caplog, monkeypatch):
    server = TritonServer(ServerOptions(repository=tmp_path, admin_key=AdminKey(KEY, "test")))
    assert KEY not in repr(server.options) and KEY not in repr(server.admin_key)

    def _no_start(args, **kwargs):
        raise OSError("not started in this test")

    monkeypatch.setattr("captioning.server.launcher.check_backends", lambda *a: None)
    monkeypatch.setattr("subprocess.Popen", _no_start)
    with caplog.at_level(logging.INFO), pytest.raises(OSError):
        server.start()
    assert "--http-restricted-api" in caplog.text and KEY not in caplog.text


def test_grpc_tls_is_opt_in_and_mutual_with_a_client_ca(tmp_path):
    args, _ = command(ServerOptions(repository=tmp_path))
    assert not any(a.startswith("--grpc-use-ssl") for a in args)
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    args, _ = command(ServerOptions(repository=tmp_path, grpc_tls=GrpcTls(cert, key)))
    assert "--grpc-use-ssl=true" in args and f"--grpc-server-cert={cert}" in args
    assert not any(a.startswith("--grpc-use-ssl-mutual") for a in args)
    args, _ = command(ServerOptions(repository=tmp_path, grpc_tls=GrpcTls(cert, key, ca)))
    assert "--grpc-use-ssl-mutual=true" in args and f"--grpc-root-cert={ca}" in args
    with pytest.raises(SecurityError, match="certificate .*c.pem does not exist"):
        GrpcTls(cert, key).validate()


def test_tls_flags_go_together():
    from captioning.cli import build_parser
    from captioning.server.commands import access_options

    with pytest.raises(SystemExit, match="go together"):
        access_options(build_parser().parse_args(["serve", "--grpc-tls-cert", str(Path("c.pem"))]))
