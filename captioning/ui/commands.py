"""`captioning ui`: the web page against a running server, or (`--serve`) against one it starts itself."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


def _ui(args: argparse.Namespace) -> int:
    from captioning.ui.app import launch

    if not args.serve:
        print(
            f"captioning UI on http://{args.host}:{args.port} for the server at {args.url} (Ctrl-C stops it)"
        )
        launch(args.url, args.host, args.port)
        return 0
    # `make ui`: build (or reuse) the demo repository, start the server and the page together; Ctrl-C stops both.
    from captioning.server.demo import prepare_repository
    from captioning.server.launcher import ServerOptions, TritonServer

    repository, _, _ = prepare_repository(args.captioner, args.translator, Path(args.workdir))
    options = ServerOptions.on_free_ports(repository, log_file=Path(args.workdir) / "tritonserver.log")
    with TritonServer(options) as server:
        print(
            f"captioning UI on http://{args.host}:{args.port} (server {server.grpc_url}; Ctrl-C stops both)"
        )
        with contextlib.suppress(KeyboardInterrupt):
            launch(server.grpc_url, args.host, args.port)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from captioning.server.commands import DEFAULT_CAPTIONER, DEFAULT_TRANSLATOR

    ui = sub.add_parser("ui", help="the web page (Gradio) over a running server")
    ui.add_argument("--url", default="localhost:8001", help="[grpc://|http://]HOST:PORT of the server")
    ui.add_argument("--host", default="127.0.0.1", help="address the page listens on (0.0.0.0 to share it)")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--serve", action="store_true", help="start a server from --captioner/--translator too")
    ui.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="with --serve")
    ui.add_argument("--translator", default=DEFAULT_TRANSLATOR, help="with --serve")
    ui.add_argument("--workdir", default="build/demo", help="with --serve: where repositories are cached")
    ui.set_defaults(func=_ui)
