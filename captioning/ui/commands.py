"""`captioning ui`: the web page against a running server, or (`--serve`) against one it starts itself.

The page reaches the server as `caption` does (`--ssl`, `--root-cert`, `--client-cert/--client-key`,
`--header`). On an address other than loopback it needs a login (`--auth FILE` or CAPTIONING_UI_AUTH), or
`--no-auth`, which serves it to everyone with a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def _refuse(message: str) -> int:
    print(f"captioning ui: error: {message}", file=sys.stderr, flush=True)
    return 2


def _ui(args: argparse.Namespace) -> int:
    from captioning.client import InvalidInputError
    from captioning.client.cli import transport_from_args
    from captioning.ui.access import AccessError, check_exposure, load_credentials

    try:  # everything checked before a port is opened or a server started
        auth = load_credentials(args.auth)
        check_exposure(args.host, args.port, auth, args.no_auth)
        transport = transport_from_args(args)
    except (AccessError, InvalidInputError) as exc:
        return _refuse(str(exc))
    if args.serve and transport.tls:
        return _refuse(
            "--serve starts its own server, on loopback without TLS: drop --ssl and the cert flags"
        )
    from captioning.ui.app import launch

    page = {"transport": transport, "auth": auth, "no_auth": args.no_auth}
    login = f", login for {len(auth)} user(s)" if auth else ""
    if not args.serve:
        print(
            f"captioning UI on http://{args.host}:{args.port} for the server at {args.url}{login} "
            "(Ctrl-C stops it)",
            flush=True,
        )
        launch(args.url, args.host, args.port, **page)
        return 0
    # `make ui`: build (or reuse) the demo repository, start the server and the page together; Ctrl-C stops both.
    from captioning.server.demo import prepare_repository
    from captioning.server.launcher import ServerOptions, TritonServer

    repository, _, _ = prepare_repository(args.captioner, args.translator, Path(args.workdir))
    options = ServerOptions.on_free_ports(repository, log_file=Path(args.workdir) / "tritonserver.log")
    with TritonServer(options) as server:
        print(
            f"captioning UI on http://{args.host}:{args.port} (server {server.grpc_url}{login}; "
            "Ctrl-C stops both)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            launch(server.grpc_url, args.host, args.port, **page)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from captioning.client.cli import add_transport_arguments
    from captioning.server.commands import DEFAULT_CAPTIONER, DEFAULT_TRANSLATOR
    from captioning.ui.access import AUTH_ENV

    ui = sub.add_parser("ui", help="the web page (Gradio) over a running server")
    ui.add_argument("--url", default="localhost:8001", help="[grpc[s]://|http[s]://]HOST:PORT of the server")
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the page listens on (0.0.0.0 shares it: needs --auth or --no-auth)",
    )
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument(
        "--auth",
        metavar="FILE",
        help=f"require a login: lines user:password, # comments (or set {AUTH_ENV}=user:password)",
    )
    ui.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a non-loopback --host without a login: anyone who can reach it can use it",
    )
    ui.add_argument("--serve", action="store_true", help="start a server from --captioner/--translator too")
    ui.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="with --serve")
    ui.add_argument("--translator", default=DEFAULT_TRANSLATOR, help="with --serve")
    ui.add_argument("--workdir", default="build/demo", help="with --serve: where repositories are cached")
    add_transport_arguments(ui)
    ui.set_defaults(func=_ui)
