"""TLS and headers on the wire: the real tritonclient (gRPC and HTTP, sync and asyncio) against small local
servers that speak Triton's protocol (tests/client/fake_triton.py). What each request carried is what the
server recorded; a handshake that cannot succeed is a CaptionError with a sentence, at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fake_triton import ARABIC, ENGLISH, start_grpc, start_http

from captioning.client import (
    AsyncCaptionClient,
    CaptionClient,
    CaptionError,
    ServerUnreachableError,
    Transport,
)

HEADERS = {"Authorization": "Bearer t0ken", "X-Captioning-Admin-Key": "k3y"}
SENT = {"authorization": "Bearer t0ken", "x-captioning-admin-key": "k3y"}


@pytest.fixture(scope="module")
def servers(certs):
    """scheme -> (TLS port, plain port, what the TLS server saw)."""
    grpc_tls, grpc_tls_port, grpc_seen = start_grpc(certs)
    grpc_plain, grpc_plain_port, _ = start_grpc()
    http_tls, http_tls_port, http_seen = start_http(certs)
    http_plain, http_plain_port, _ = start_http()
    yield {
        "grpc": (grpc_tls_port, grpc_plain_port, grpc_seen),
        "http": (http_tls_port, http_plain_port, http_seen),
    }
    for server in (grpc_tls, grpc_plain):
        server.stop(0)
    for server in (http_tls, http_plain):
        server.shutdown()


def _sent(seen, start: int) -> list[tuple[str, dict[str, str]]]:
    """(call, our headers) of the requests since `start`; the transports' own headers left out."""
    return [(call, {k: v for k, v in headers.items() if k in SENT}) for call, headers in seen.calls[start:]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_with_headers_on_every_request(protocol, servers, certs, jpeg: Path) -> None:
    port, _, seen = servers[protocol]
    start = len(seen.calls)
    transport = Transport(root_certificates=certs.ca, headers=HEADERS)
    with CaptionClient(f"{protocol}s://localhost:{port}", timeout_s=10, transport=transport) as client:
        client.wait_ready(5)
        result = client.caption(jpeg)
        assert (result.english, result.arabic) == (ENGLISH, ARABIC)
        assert client.translate(["a", "b"]) == ["ar:a", "ar:b"]
    calls = _sent(seen, start)
    assert len(calls) == 4 and all(headers == SENT for _, headers in calls), calls
    ready, infer = ("ModelReady", "ModelInfer") if protocol == "grpc" else ("GET", "POST")
    assert calls[0][0].startswith(ready) and all(call.startswith(infer) for call, _ in calls[1:])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_tls_with_headers(protocol, servers, certs, jpeg: Path) -> None:
    port, _, seen = servers[protocol]
    start = len(seen.calls)
    url = f"{protocol}://localhost:{port}"  # plain scheme, TLS from the Transport

    async def run():
        transport = Transport(ssl=True, root_certificates=certs.ca, headers=HEADERS)
        async with AsyncCaptionClient(url, timeout_s=10, wait_ready_s=5, transport=transport) as client:
            return await client.caption(jpeg, lang="en"), await client.translate("a")

    result, translation = asyncio.run(run())
    assert result.english == ENGLISH and translation == "ar:a"
    calls = _sent(seen, start)
    assert len(calls) == 3 and all(headers == SENT for _, headers in calls), calls


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("mode", ["plain client", "untrusted certificate", "TLS to a plain port"])
def test_handshake_failures_are_caption_errors_at_once(protocol, mode, servers, certs, jpeg: Path) -> None:
    tls_port, plain_port, _ = servers[protocol]
    url, transport, says = {
        "plain client": (f"{protocol}://localhost:{tls_port}", Transport(), "TLS on that port"),
        "untrusted certificate": (
            f"{protocol}s://localhost:{tls_port}",
            Transport(root_certificates=certs.other_ca),
            "TLS handshake failed",
        ),
        "TLS to a plain port": (
            f"{protocol}s://localhost:{plain_port}",
            Transport(root_certificates=certs.ca),
            "TLS handshake failed",
        ),
    }[mode]
    start = time.monotonic()
    with CaptionClient(url, timeout_s=30, transport=transport) as client:
        assert client.is_ready() is False
        with pytest.raises(ServerUnreachableError, match=says) as exc:
            client.caption(jpeg)
        assert url in str(exc.value)
        with pytest.raises(ServerUnreachableError):
            client.wait_ready(0.5)

    async def run() -> None:
        async with AsyncCaptionClient(url, timeout_s=30, transport=transport) as client:
            with pytest.raises(ServerUnreachableError, match=says):
                await client.translate("a")

    asyncio.run(run())
    assert time.monotonic() - start < 10


def test_mutual_tls(certs) -> None:
    server, port, seen = start_grpc(certs, client_auth=True)
    try:
        url = f"grpcs://localhost:{port}"
        mutual = Transport(
            root_certificates=certs.ca, private_key=certs.client_key, certificate_chain=certs.client_cert
        )
        with CaptionClient(url, timeout_s=10, transport=mutual) as client:
            assert client.translate("a") == "ar:a"
        one_sided = Transport(root_certificates=certs.ca)
        with CaptionClient(url, timeout_s=10, transport=one_sided) as client, pytest.raises(CaptionError):
            client.translate("a")
        assert seen.names() == ["ModelInfer"]
    finally:
        server.stop(0)
