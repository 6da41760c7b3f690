"""`captioning serve` and `captioning demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_TRANSLATOR = "facebook/mbart-large-50-many-to-many-mmt"


def _serve(args: argparse.Namespace) -> int:
    from captioning.server.launcher import serve_forever

    repository = args.repository
    if repository is None:
        from captioning.server.demo import prepare_repository

        repository, _, _ = prepare_repository(args.captioner, args.translator, Path(args.workdir))
    return serve_forever(serve_options(args, repository))


def serve_options(args: argparse.Namespace, repository):
    from captioning.server.launcher import ServerOptions, is_remote

    return ServerOptions(
        repository=repository if is_remote(repository) else Path(repository),
        **access_options(args),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        exit_timeout_s=args.exit_timeout,
        tritonserver=Path(args.tritonserver) if args.tritonserver else None,
    )


def access_options(args: argparse.Namespace) -> dict:
    """Who can reach the server and change it: the bound address, the admin key, gRPC TLS (docs/security.md)."""
    from captioning.server.security import GrpcTls, resolve_admin_key

    tls = None
    if args.grpc_tls_cert or args.grpc_tls_key:
        if not (args.grpc_tls_cert and args.grpc_tls_key):
            raise SystemExit("--grpc-tls-cert and --grpc-tls-key go together")
        client_ca = Path(args.grpc_tls_client_ca) if args.grpc_tls_client_ca else None
        tls = GrpcTls(Path(args.grpc_tls_cert), Path(args.grpc_tls_key), client_ca)
    elif args.grpc_tls_client_ca:
        raise SystemExit("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key")
    key_file = Path(args.admin_key_file) if args.admin_key_file else None
    return {"host": args.host, "admin_key": resolve_admin_key(key_file), "grpc_tls": tls}


def add_access_arguments(parser: argparse.ArgumentParser, host: str) -> None:
    parser.add_argument(
        "--host",
        default=host,
        help=f"address the HTTP, gRPC and metrics ports listen on (default {host}; 0.0.0.0: every address)",
    )
    parser.add_argument(
        "--admin-key-file",
        help="file holding the key Triton's control plane (load/unload, shared memory, statistics, trace, logging) "
        "asks for; default $CAPTIONING_ADMIN_KEY_FILE, then $CAPTIONING_ADMIN_KEY, else a random key per start",
    )
    parser.add_argument("--grpc-tls-cert", help="PEM server certificate: serve gRPC over TLS")
    parser.add_argument("--grpc-tls-key", help="PEM private key of --grpc-tls-cert")
    parser.add_argument(
        "--grpc-tls-client-ca", help="PEM CA: gRPC clients must present a certificate it signed"
    )


def _demo(args: argparse.Namespace) -> int:
    from captioning.server.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            captioner=args.captioner,
            translator=args.translator,
            images=[Path(p) for p in args.images],
            count=args.count,
            workdir=Path(args.workdir),
        )
    )


def _node_start(args: argparse.Namespace) -> int:
    from captioning.server.entrypoint import NodeOptions, start_node

    return start_node(
        NodeOptions(
            repository=args.repository,
            tritonserver=args.tritonserver,
            trtexec=args.trtexec,
            exit_timeout_s=args.exit_timeout,
            access=access_options(args),
        )
    )


def _register_node_start(sub: argparse._SubParsersAction) -> None:
    from captioning.server.security import EVERY_ADDRESS

    node = sub.add_parser(
        "node-start", help="container entrypoint: build missing TensorRT engines, then serve"
    )
    node.add_argument("--repository", default="/models", help="a directory (a volume) or s3://, gs://, as://")
    node.add_argument("--tritonserver", default="/opt/tritonserver/bin/tritonserver")
    node.add_argument("--trtexec", default="/usr/src/tensorrt/bin/trtexec")
    node.add_argument("--exit-timeout", type=int, default=30, help="drain time after SIGTERM, seconds")
    add_access_arguments(node, host=EVERY_ADDRESS)  # the container's entrypoint: inside a pod
    node.set_defaults(func=_node_start)


def register(sub: argparse._SubParsersAction) -> None:
    _register_node_start(sub)
    serve = sub.add_parser("serve", help="run tritonserver on a model repository in the foreground")
    serve.add_argument(
        "--repository",
        help="a repository written by `captioning export`: a directory, or s3://, gs://, as:// (Triton reads it; "
        "credentials from its environment, docs/deploy.md)",
    )
    serve.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="used without --repository")
    serve.add_argument("--translator", default=DEFAULT_TRANSLATOR, help="used without --repository")
    serve.add_argument(
        "--workdir", default="build/demo", help="where repositories built from checkpoints are cached"
    )
    add_access_arguments(serve, host="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument(
        "--exit-timeout", type=int, default=30, help="seconds in-flight requests may finish after SIGTERM"
    )
    serve.add_argument(
        "--tritonserver",
        help="a system tritonserver binary (e.g. /opt/tritonserver/bin/tritonserver in the NGC container) "
        "instead of the pip wheel's",
    )
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="export, serve and caption a few images end to end")
    demo.add_argument("--captioner", default=DEFAULT_CAPTIONER)
    demo.add_argument("--translator", default=DEFAULT_TRANSLATOR)
    demo.add_argument("--count", type=int, default=4, help="how many sample images")
    demo.add_argument("--workdir", default="build/demo", help="where repositories are built and cached")
    demo.add_argument("images", nargs="*", help="images to caption (default: shared Flickr8k samples)")
    demo.set_defaults(func=_demo)
