"""Pick gRPC or HTTP from the URL, the way pytriton's client does, with Triton's default ports."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from captioning.client.errors import InvalidInputError

GRPC_PORT = 8001
HTTP_PORT = 8000
PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """host:port as tritonclient wants it (no scheme); IPv6 hosts keep their brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"


def parse_endpoint(url: str, protocol: str | None = None) -> Endpoint:
    """grpc:// or http:// decide; a bare host:port means gRPC unless the port is 8000 (HTTP)."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    text = url.strip()
    if not text:
        raise InvalidInputError("server URL is empty")
    scheme = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in PROTOCOLS:
            raise InvalidInputError(f"unsupported URL scheme {scheme!r} in {url!r}: use grpc:// or http://")
        if protocol is not None and protocol != scheme:
            raise InvalidInputError(f"protocol={protocol!r} contradicts the URL {url!r}")
    try:
        parts = urlsplit("//" + text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidInputError(f"invalid server URL {url!r}: {exc}") from None
    if not host or parts.path.strip("/") or parts.query:
        raise InvalidInputError(f"invalid server URL {url!r}: expected [grpc://|http://]HOST[:PORT]")
    chosen = scheme or protocol
    if chosen is None:
        chosen = "http" if port == HTTP_PORT else "grpc"
    if port is None:
        port = GRPC_PORT if chosen == "grpc" else HTTP_PORT
    return Endpoint(chosen, host, port)
