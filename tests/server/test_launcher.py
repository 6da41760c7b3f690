"""The launcher's command line: remote repositories pass through, a system tritonserver brings its backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.server.launcher import ServerOptions, command, is_remote


@pytest.mark.parametrize(
    "url", ["s3://bucket/models", "s3://http://minio.minio:9000/bucket/m", "gs://b/m", "as://acct/c/m"]
)
def test_remote_repositories_pass_through_to_triton(url):
    args, _ = command(ServerOptions(repository=url, tritonserver=Path("/opt/tritonserver/bin/tritonserver")))
    assert f"--model-repository={url}" in args and is_remote(url)
    assert not any(a.startswith("--backend-directory") for a in args)  # the container's backends
    assert "--allow-gpu-metrics=true" in args


def test_serve_cli_keeps_a_remote_repository_as_given():
    from captioning.cli import build_parser
    from captioning.server.commands import serve_options

    args = build_parser().parse_args(["serve", "--repository", "s3://bucket/models", "--exit-timeout", "45"])
    options = serve_options(args, args.repository)
    assert options.repository == "s3://bucket/models" and options.exit_timeout_s == 45


def test_local_repositories_are_resolved_and_the_server_drains(tmp_path):
    args, env = command(ServerOptions(repository=tmp_path))
    assert f"--model-repository={tmp_path.resolve()}" in args
    assert "--strict-readiness=true" in args and "--exit-timeout-secs=30" in args
    assert "--model-control-mode=explicit" in args  # the stub watchdog reloads models through the API
    assert "--metrics-config=summary_latencies=true" in args
    assert not is_remote(tmp_path) and not is_remote("relative/s3:/x")
