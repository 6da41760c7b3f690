"""Start and stop `tritonserver` from the nvidia-pytriton wheel on machines without a Triton container.

The wheel ships the server binary, the Python backend and one backend stub per Python version; the stub has
to sit beside `libtriton_python.so` in the backend directory the server is given, so we assemble that
directory once per environment. Only the binary and the backend are used: the repository is a plain Triton
model repository.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from captioning.runtime.cpu_slots import remove_server_slots
from captioning.runtime.ledger import remove_server_ledger
from captioning.server.security import AdminKey, GrpcTls, local_address, redacted

LOG = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    repository: Path
    # Where the three ports listen: loopback unless the operator opens them (`--host 0.0.0.0` or an address).
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    ready_timeout_s: float = 300.0
    # Python-backend shared memory per model instance; KV caches pass through it on every BLS call.
    shm_default_byte_size: int = 16 * 1024 * 1024
    log_file: Path | None = None
    # GPU repositories: Triton's CUDA pool for tensors crossing model boundaries (None: the manifest's, if any).
    cuda_memory_pool_bytes: int | None = None
    # Reload a model whose stub process died (captioning/server/watchdog.py); needs explicit model control.
    watchdog: bool = True
    # Graceful shutdown: how long the server lets in-flight requests finish after SIGINT/SIGTERM.
    exit_timeout_s: int = 30
    # A system tritonserver (the NGC container's /opt/tritonserver/bin/tritonserver) instead of the pip
    # wheel's; it brings its own backends (onnxruntime, TensorRT, Python).
    tritonserver: Path | None = None
    # The control plane's key (docs/security.md); None: a random one for this start. Opt-in gRPC TLS.
    admin_key: AdminKey | None = dataclasses.field(default=None, repr=False)
    grpc_tls: GrpcTls | None = None

    @property
    def local_host(self) -> str:
        """Where this machine reaches the server (the launcher's readiness checks, the watchdog)."""
        return local_address(self.host)

    @classmethod
    def on_free_ports(cls, repository: Path, **kwargs) -> ServerOptions:
        """Options for a server on three free loopback ports: what the demo, the bench and the tests run."""
        return cls(
            repository=Path(repository),
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            **kwargs,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pytriton_dist() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServerError(
            "nvidia-pytriton is not installed; it provides the tritonserver binary "
            "(pip install 'bilingual-captioning[serving]')"
        )
    return Path(spec.origin).parent


def server_layout() -> tuple[Path, Path, Path]:
    """Return (tritonserver binary, backend directory, shared-library directory), building the backend dir."""
    dist = _pytriton_dist()
    binary = dist / "tritonserver" / "bin" / "tritonserver"
    libs = dist.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():  # editable pytriton installs keep them inside the package
        libs = dist / "tritonserver" / "external_libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    source = dist / "tritonserver" / "backends" / "python"
    cache = Path(os.environ.get("CAPTIONING_CACHE", Path.home() / ".cache" / "captioning"))
    backends = cache / f"triton-backends-py{version}-{_file_id(binary)}"
    python_dir = backends / "python"
    if not (python_dir / "triton_python_backend_stub").exists():
        tmp = backends.with_name(backends.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / "python" / item.name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(backends, ignore_errors=True)
        os.replace(tmp, backends)
    return binary, backends, libs


def _file_id(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size:x}{int(stat.st_mtime):x}"


def server_env(libs: Path) -> dict[str, str]:
    """The stub embeds the system libpython; it must find this environment's `python3` and the wheel's libs."""
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # The embedded interpreter finds its prefix (and so a virtualenv's site-packages) from `python3` on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # One thread pool per model instance; the graph runners choose their own thread counts.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


REMOTE_SCHEMES = (
    "s3",
    "gs",
    "as",
)  # Triton reads these repositories itself (credentials from its environment)


def is_remote(repository: Path | str) -> bool:
    return str(repository).split("://", 1)[0] in REMOTE_SCHEMES and "://" in str(repository)


def command(options: ServerOptions, admin_key: AdminKey | None = None) -> tuple[list[str], dict[str, str]]:
    """tritonserver's command line; the control plane restricted to `admin_key` (a random one without it)."""
    admin_key = admin_key or options.admin_key or AdminKey.generate()
    if options.tritonserver is not None:
        binary, backend_args, env = Path(options.tritonserver), [], os.environ.copy()
    else:
        binary, backends, libs = server_layout()
        backend_args, env = [f"--backend-directory={backends}"], server_env(libs)
    repository = (
        str(options.repository) if is_remote(options.repository) else Path(options.repository).resolve()
    )
    args = [
        str(binary),
        f"--model-repository={repository}",
        *backend_args,
        f"--http-address={options.host}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.host}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={options.host}",
        f"--metrics-port={options.metrics_port}",
        *admin_key.server_args(),
        *(options.grpc_tls.server_args() if options.grpc_tls is not None else []),
        "--allow-metrics=true",
        "--metrics-config=summary_latencies=true",  # p50/p95 per model for the dashboard
        f"--allow-gpu-metrics={'true' if options.tritonserver else 'false'}",  # the container's server sees the GPU
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        f"--log-verbose={options.log_verbose}",
        f"--backend-config=python,shm-default-byte-size={options.shm_default_byte_size}",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]
    if options.watchdog:  # the watchdog reloads models through the repository API
        args += ["--model-control-mode=explicit", "--load-model=*"]
    pool = options.cuda_memory_pool_bytes or repository_manifest(options.repository).get(
        "cuda_memory_pool_byte_size"
    )
    if pool:
        args.append(f"--cuda-memory-pool-byte-size=0:{int(pool)}")
    return args, env


def repository_manifest(repository: Path | str) -> dict:
    """The repository's manifest.json (written by `captioning export`); {} for repositories without one."""
    import json

    if is_remote(repository):
        return {}  # Triton reads it; a remote manifest is not fetched here
    path = Path(repository) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_backends(repository: Path, backends: Path) -> None:
    """Refuse, by name, a repository that needs a backend this server does not have (the pip server has only
    the Python backend; a GPU repository needs Triton's onnxruntime backend and a CUDA device)."""
    manifest = repository_manifest(repository)
    if manifest.get("target") == "gpu" and not (backends / "onnxruntime").is_dir():
        raise ServerError(
            f"{repository} is a GPU repository (blip_vision on Triton's onnxruntime backend, generators on CUDA); "
            f"this tritonserver has no onnxruntime backend in {backends}. Serve it in the "
            "nvcr.io/nvidia/tritonserver:24.10-py3 container (docs/gpu.md), or export with --target cpu."
        )


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.process: subprocess.Popen | None = None
        self.watchdog = None
        self._log_handle = None
        # Known to this process only (the watchdog, tests, the bench); never logged.
        self.admin_key = options.admin_key or AdminKey.generate()

    @property
    def http_url(self) -> str:
        return f"{_url_host(self.options.local_host)}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.options.local_host)}:{self.options.grpc_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """What an HTTP request to a restricted API of this server must carry."""
        return self.admin_key.headers

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """What a gRPC call to a restricted protocol of this server must carry."""
        return self.admin_key.grpc_headers

    def start(self) -> TritonServer:
        remote = is_remote(self.options.repository)
        if not remote and not Path(self.options.repository).is_dir():
            raise ServerError(f"model repository {self.options.repository} does not exist")
        if self.options.grpc_tls is not None:
            self.options.grpc_tls.validate()
        args, env = command(self.options, self.admin_key)
        if not remote and self.options.tritonserver is None:
            check_backends(Path(self.options.repository), server_layout()[1])
        LOG.info("starting %s", redacted(args, self.admin_key))
        LOG.info("control plane restricted to the admin key from %s", self.admin_key.source)
        stdout = None
        if self.options.log_file is not None:
            self._log_handle = open(self.options.log_file, "ab")  # noqa: SIM115 - lives as long as the server
            stdout = self._log_handle
        self.process = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        self.wait_ready()
        if self.options.watchdog:
            from captioning.server.watchdog import StubWatchdog

            self.watchdog = StubWatchdog(
                self.process.pid, self.options.http_port, self.admin_headers, host=self.options.local_host
            )
            self.watchdog.start()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        url = f"http://{_url_host(self.options.local_host)}:{self.options.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready"
                    + (f"; see {self.options.log_file}" if self.options.log_file else "")
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,  # nosec B310 # an http:// URL built here
            ):
                if response.status == 200:
                    LOG.info("tritonserver ready (http %s, grpc %s)", self.http_url, self.grpc_url)
                    return
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver was not ready within {self.options.ready_timeout_s:.0f} s")

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGINT, then wait while Triton drains in-flight requests (its exit timeout, plus a margin)."""
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.wait_drained(time.monotonic(), timeout_s or self.options.exit_timeout_s + 15.0)
        if self.process is not None:
            remove_server_slots(self.process.pid)
            remove_server_ledger(self.process.pid)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def wait_drained(self, since: float, timeout_s: float) -> None:
        """Wait for the process to exit after its stop signal; kill it past `timeout_s`. A model whose stub
        died and was reloaded leaves its lost instance behind, which Triton waits for until its exit timeout:
        once every live stub has exited (everything in flight finished), nothing is lost by ending it."""
        assert self.process is not None
        while self.process.poll() is None:
            time.sleep(0.2)
            lost_only = bool(self.watchdog and self.watchdog.restarts) and not self.live_stubs()
            if lost_only or time.monotonic() - since > timeout_s:
                if not lost_only:
                    LOG.warning("tritonserver did not stop within %.0f s; killing it", timeout_s)
                self.process.kill()
                self.process.wait()

    def live_stubs(self):
        from captioning.server.watchdog import stub_models

        return stub_models(self.process.pid) if self.process is not None else {}

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def running_server(options: ServerOptions) -> Iterator[TritonServer]:
    with TritonServer(options) as server:
        yield server


def serve_forever(options: ServerOptions) -> int:
    """Run in the foreground until SIGINT/SIGTERM; forward the signal so the server drains and exits.

    On the signal Triton stops accepting requests and lets in-flight ones finish for up to `exit_timeout_s`;
    the launcher kills it only if it is still there well after that. The handler only forwards the signal:
    waiting inside it would deadlock with the main thread's wait.
    """
    server = TritonServer(options)
    stop_requested: list[float] = []
    drain_timeout_s = options.exit_timeout_s + 15.0

    def _handle(signum, _frame):
        LOG.info("received signal %d, draining in-flight requests and stopping tritonserver", signum)
        stop_requested.append(time.monotonic())
        if server.watchdog is not None:
            server.watchdog.stop()  # models unloading at shutdown are not crashes
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    server.start()
    print(
        f"tritonserver ready on {options.host}: gRPC :{options.grpc_port}{' (TLS)' if options.grpc_tls else ''}, "
        f"HTTP :{options.http_port}, metrics :{options.metrics_port}; control plane closed to requests without "
        f"the admin key ({server.admin_key.source}) (Ctrl-C stops it)",
        flush=True,
    )
    assert server.process is not None
    while server.process.poll() is None and not stop_requested:
        time.sleep(0.2)
    if stop_requested:
        server.wait_drained(stop_requested[0], drain_timeout_s)
    server.stop()
    return 0 if stop_requested else server.process.returncode
