"""The container entrypoint (`captioning node-start`): build what this GPU lacks, then serve.

1. A repository that serves a TensorRT plan (`export --target gpu --vision-engine tensorrt`) needs engines built
   for this GPU and TensorRT version. If none match (first start, or a new GPU or TensorRT after an upgrade),
   they are built now with `trtexec` and cached in the repository's volume under their key, so the next start
   of a pod on the same kind of node skips the build.
2. Then `tritonserver` starts through the launcher (strict readiness, the manifest's CUDA memory pool, metrics,
   the stub watchdog, a bounded drain on SIGTERM).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioning import contract


@dataclasses.dataclass(frozen=True)
class NodeOptions:
    repository: str
    tritonserver: str = "/opt/tritonserver/bin/tritonserver"
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    exit_timeout_s: int = 30
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # host, admin_key, grpc_tls for ServerOptions (captioning.server.commands.access_options); the host defaults
    # to every address: the entrypoint runs inside a pod or container.
    access: dict = dataclasses.field(default_factory=dict)


def wants_engines(repository: Path) -> bool:
    """Whether the repository serves a TensorRT plan (its vision model's backend is `tensorrt`)."""
    from captioning.export.model_config import read_config

    config = repository / contract.VISION_MODEL / "config.pbtxt"
    return config.is_file() and read_config(config).backend == "tensorrt"


def build_decision(repository: Path, gpu: str, trt: str) -> bool:
    """True when this node must build engines before it can serve the repository."""
    from captioning.export.engines import needs_build

    return wants_engines(repository) and needs_build(repository, gpu, trt)


def start_node(options: NodeOptions) -> int:
    from captioning.server.launcher import ServerOptions, is_remote, serve_forever
    from captioning.server.security import EVERY_ADDRESS

    local = not is_remote(options.repository)
    if local and wants_engines(Path(options.repository)):
        from captioning.export.engines import BuildOptions, build_engines, gpu_name, trt_version

        # Builds only what this GPU and TensorRT version lack (the test of `build_decision`), and serves this
        # key's plans even when another node's were copied last into the shared volume.
        gpu, trt = gpu_name(), trt_version(options.trtexec)
        build_engines(
            Path(options.repository), BuildOptions(trtexec=options.trtexec, gpu_name=gpu, trt_version=trt)
        )
    return serve_forever(
        ServerOptions(
            repository=Path(options.repository) if local else options.repository,
            http_port=options.http_port,
            grpc_port=options.grpc_port,
            metrics_port=options.metrics_port,
            exit_timeout_s=options.exit_timeout_s,
            tritonserver=Path(options.tritonserver),
            **{"host": EVERY_ADDRESS, **options.access},
        )
    )
