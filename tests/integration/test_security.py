"""The control plane as an attacker on the network sees it: `captioning serve` with its defaults, a real server.

Anonymous clients can infer and read health, metadata, model configs and statistics; they cannot load, unload
or upload models, register shared memory, or read or change trace and log settings. An operator who set a key can. The
ports listen on loopback unless opened; gRPC TLS works with a certificate made here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from captioning import contract
from captioning.server.launcher import free_port

pytestmark = pytest.mark.integration
KEY = "operator-key-" + "0123456789abcdef" * 2
RESTRICTED = "restricted"  # Triton's refusal names the API as restricted


@dataclasses.dataclass
class Served:
    http: int
    grpc: int
    metrics: int
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def _serve(repository: Path, workdir: Path, *extra: str, env: dict | None = None):
    ports = free_port(), free_port(), free_port()
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "captioning"), "serve", "--repository", str(repository),
             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    served = Served(*ports, process, log)
    try:
        _wait_ready(served)
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(served: Served, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.log.read_text()[-3000:]
        with contextlib.suppress(OSError):
            if _http(served, "GET", "/v2/health/ready")[0] == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"not ready: {served.log.read_text()[-3000:]}")


def _http(served: Served, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.http}{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def default_server(repository, tmp_path_factory):
    with _serve(repository, tmp_path_factory.mktemp("serve-defaults")) as served:
        yield served


def _refused(status: int, body: str) -> bool:
    return status in (401, 403) and RESTRICTED in body.lower()


def test_uploading_and_running_code_is_refused_and_the_code_never_runs(default_server, tmp_path):
    marker = tmp_path / "the-uploaded-code-ran"
    code = (
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        f"        open({str(marker)!r}, 'w').write('owned')\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]})  # fmt: skip
    body = {"parameters": {"config": config, "file:1/model.py": base64.b64encode(code.encode()).decode()}}
    assert _refused(*_http(default_server, "POST", "/v2/repository/models/evil/load", body))
    time.sleep(3)
    assert not marker.exists()
    assert _http(default_server, "GET", "/v2/models/evil/ready")[0] != 200


def test_unload_load_and_the_index_are_refused_over_http_and_grpc(default_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    for path in ("/v2/repository/models/translator/unload", "/v2/repository/models/translator/load"):
        assert _refused(*_http(default_server, "POST", path, {}))
    assert _refused(*_http(default_server, "POST", "/v2/repository/index", {}))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{default_server.grpc}") as client:
        for call in (lambda: client.unload_model("translator"), lambda: client.load_model("translator"),
                     client.get_model_repository_index):  # fmt: skip
            with pytest.raises(InferenceServerException, match="(?i)restricted"):
                call()
        assert client.is_model_ready("translator")


def test_shared_memory_registration_is_refused(default_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    ours = sorted(p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*"))
    key = "/" + (ours[0] if ours else "triton_python_backend_shm_region_1")
    body = {"key": key, "offset": 0, "byte_size": 64}
    assert _refused(*_http(default_server, "POST", "/v2/systemsharedmemory/region/x/register", body))
    assert _refused(*_http(default_server, "GET", "/v2/systemsharedmemory/status"))
    assert _refused(*_http(default_server, "POST", "/v2/cudasharedmemory/region/x/unregister", {}))
    with (
        grpcclient.InferenceServerClient(f"127.0.0.1:{default_server.grpc}") as client,
        pytest.raises(InferenceServerException, match="(?i)restricted"),
    ):
        client.register_system_shared_memory("x", key, 64)


def test_trace_and_logging_are_refused_and_statistics_stay_readable(default_server):
    for path in ("/v2/trace/setting", "/v2/models/translator/trace/setting", "/v2/logging"):
        assert _refused(*_http(default_server, "GET", path)), path
    assert _refused(*_http(default_server, "POST", "/v2/logging", {"log_file": "/tmp/x"}))
    assert _refused(*_http(default_server, "POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}))
    # Open on purpose (docs/security.md): perf_analyzer needs them, and they change nothing.
    assert _http(default_server, "GET", "/v2/models/stats")[0] == 200


def test_inference_health_metadata_and_config_stay_open(default_server):
    from captioning.client import CaptionClient

    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/translator",
                 "/v2/models/arabic_caption/config"):  # fmt: skip
        assert _http(default_server, "GET", path)[0] == 200, path
    with CaptionClient(f"127.0.0.1:{default_server.grpc}", timeout_s=60) as client:
        assert client.translate("a dog runs on the beach")


def test_perf_analyzer_still_measures(default_server, tmp_path):
    from captioning.bench.perf_analyzer import (
        PerfRun,
        find_perf_analyzer,
        perf_env,
        text_input_data,
        write_input_data,
    )

    binary = find_perf_analyzer()
    assert binary is not None, "perf_analyzer is not installed (scripts/install-perf-analyzer.sh)"
    data = write_input_data(tmp_path / "text.json", text_input_data(contract.TEXT_INPUT, ["a dog runs"]))
    run = PerfRun(
        contract.TRANSLATOR_MODEL, f"127.0.0.1:{default_server.grpc}", data, requests=4, steady=False
    )
    result = subprocess.run(
        run.command(binary, tmp_path / "out.csv"),
        capture_output=True,
        text=True,
        timeout=300,
        env=perf_env(binary),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "out.csv").read_text().count("\n") >= 2


def _listening(port: int) -> set[ipaddress.IPv4Address]:
    """Addresses listening on `port`, from /proc/net/tcp{,6}; IPv4-mapped IPv6 ones as IPv4."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                    found.add(_address(address))
    return found


def _address(kernel_hex: str):
    """The kernel writes each 32-bit word of an address in host (little-endian) byte order."""
    raw = b"".join(bytes.fromhex(kernel_hex[i : i + 8])[::-1] for i in range(0, len(kernel_hex), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or (ipaddress.IPv4Address(0) if address == ipaddress.IPv6Address(0) else address)


def test_the_ports_listen_on_loopback_by_default(default_server):
    for port in (default_server.http, default_server.grpc, default_server.metrics):
        listening = _listening(port)
        assert listening and all(a.is_loopback for a in listening), (port, listening)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def operator_server(repository, certificate, tmp_path_factory):
    """What an operator opens on purpose: every address, their own key from a file, gRPC over TLS."""
    workdir = tmp_path_factory.mktemp("serve-operator")
    key_file = workdir / "admin-key"
    key_file.write_text(KEY + "\n")
    cert, key = certificate
    args = ("--host", "0.0.0.0", "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key))
    with _serve(repository, workdir, *args, env={"CAPTIONING_ADMIN_KEY_FILE": str(key_file)}) as served:
        yield served


def test_with_the_key_the_operator_unloads_and_loads(operator_server):
    headers = {contract.ADMIN_KEY_HEADER: KEY}
    wrong = {contract.ADMIN_KEY_HEADER: KEY[::-1]}
    assert _refused(*_http(operator_server, "POST", "/v2/repository/models/translator/unload", {}, wrong))
    assert _http(operator_server, "GET", "/v2/logging", headers=headers)[0] == 200
    assert _http(operator_server, "POST", "/v2/repository/models/translator/unload", {}, headers)[0] == 200
    assert _http(operator_server, "POST", "/v2/repository/models/translator/load", {}, headers)[0] == 200
    _wait_ready(operator_server)
    assert KEY not in operator_server.log.read_text()


def test_host_0000_opens_every_address(operator_server):
    for port in (operator_server.http, operator_server.grpc, operator_server.metrics):
        assert _listening(port) == {ipaddress.IPv4Address("0.0.0.0")}, port


def test_the_sdk_captions_over_grpc_tls(operator_server, certificate, flickr_images):
    from captioning.client import CaptionClient, CaptionError, Transport

    cert, _ = certificate
    url = f"grpcs://localhost:{operator_server.grpc}"
    with CaptionClient(url, timeout_s=60, transport=Transport(root_certificates=cert)) as client:
        result = client.caption(flickr_images[0].read_bytes())
    assert result.english and result.arabic
    with (
        pytest.raises(CaptionError),
        CaptionClient(f"localhost:{operator_server.grpc}", timeout_s=10) as plain,
    ):
        plain.translate("no TLS, no answer")
