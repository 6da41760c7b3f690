"""Tiny stand-ins for Triton's gRPC and HTTP endpoints, with or without TLS, that record the headers each request
carries. They answer readiness and inference the way Triton does on the wire, so the real tritonclient (sync
and asyncio) talks to them: the tests see what actually leaves the client, not what a fake of tritonclient saw.
"""

from __future__ import annotations

import json
import ssl
import struct
import subprocess
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ENGLISH, ARABIC = "a red square", "مربع أحمر"


@dataclass
class Seen:
    """(call, headers) of every request that reached the server, headers lower-cased."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def add(self, call: str, headers: dict[str, str]) -> None:
        self.calls.append((call, {k.lower(): v for k, v in headers.items()}))

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate it signed (localhost, 127.0.0.1), a client certificate it signed, and a
    second, unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(folder: Path) -> Certificates:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={ca} CA",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.cnf", "-out", f"{name}.pem")  # fmt: skip
    return Certificates(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "other.pem",
    )


def _outputs(model: str, names: list[str], texts: list[str]) -> dict[str, list[str]]:
    if model == "translator":
        return {"translation": [f"ar:{t}" for t in texts]}
    values = {"caption_en": [ENGLISH], "caption_ar": [ARABIC]}
    return {name: values[name] for name in names}


def _serialize(items: list[bytes]) -> bytes:
    """Triton's BYTES tensor on the wire: each element as a 4-byte little-endian length and its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# -- gRPC ----------------------------------------------------------------------------------------------
def start_grpc(certs: Certificates | None = None, *, client_auth: bool = False):
    """A gRPC server on a free port of 127.0.0.1; TLS with `certs`. Returns (server, port, seen)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import deserialize_bytes_tensor

    seen = Seen()

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelReady(self, request, context):  # noqa: N802 - gRPC's method name
            seen.add("ModelReady", dict(context.invocation_metadata()))
            return service_pb2.ModelReadyResponse(ready=True)

        def ModelInfer(self, request, context):  # noqa: N802
            seen.add("ModelInfer", dict(context.invocation_metadata()))
            texts = [
                t.decode() for t in deserialize_bytes_tensor(request.raw_input_contents[0])
            ] if request.inputs[0].name == "text" else []  # fmt: skip
            names = [o.name for o in request.outputs]
            response = service_pb2.ModelInferResponse(model_name=request.model_name)
            for name, values in _outputs(request.model_name, names, texts).items():
                response.outputs.add(name=name, datatype="BYTES", shape=[len(values), 1])
                response.raw_output_contents.append(_serialize([v.encode() for v in values]))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
            root_certificates=certs.ca.read_bytes() if client_auth else None,
            require_client_auth=client_auth,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port, seen


# -- HTTP ----------------------------------------------------------------------------------------------
def start_http(certs: Certificates | None = None):
    """An HTTP/1.1 server on a free port of 127.0.0.1 (HTTPS with `certs`: a gateway's side of it).
    Returns (server, port, seen); stop it with `server.shutdown()`."""
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's method name
            seen.add(f"GET {self.path}", dict(self.headers.items()))
            self._answer(b"" if self.path.endswith("/ready") else b"{}")

        def do_POST(self) -> None:  # noqa: N802
            seen.add(f"POST {self.path}", dict(self.headers.items()))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            size = int(self.headers.get("Inference-Header-Content-Length", len(body)))
            request = json.loads(body[:size])
            model = self.path.split("/")[3]
            texts = [body[size + 4 :].decode()] if model == "translator" else []
            names = [o["name"] for o in request.get("outputs", [])]
            outputs = [
                {"name": n, "datatype": "BYTES", "shape": [len(v), 1], "data": v}
                for n, v in _outputs(model, names, texts).items()
            ]
            self._answer(json.dumps({"model_name": model, "outputs": outputs}).encode())

        def _answer(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if certs is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs.server_cert, certs.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1], seen
