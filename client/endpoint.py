"""Pick gRPC or HTTP, and plain or TLS, from the URL, the way pytriton's client does, with Triton's ports."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from captioning.client.errors import InvalidInputError

GRPC_PORT = 8001
HTTP_PORT = 8000
HTTPS_PORT = 443  # Triton's HTTP port has no TLS: https:// means a gateway in front of it
PROTOCOLS = ("grpc", "http")
# scheme -> (protocol, TLS)
SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True), "http": ("http", False), "https": ("http", True)}


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    host: str
    port: int
    tls: bool = False

    @property
    def address(self) -> str:
        """host:port as tritonclient wants it (no scheme); IPv6 hosts keep their brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def scheme(self) -> str:
        return self.protocol + ("s" if self.tls else "")

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"


def parse_endpoint(url: str, protocol: str | None = None) -> Endpoint:
    """The scheme decides (grpcs:// and https:// mean TLS); a bare host:port means gRPC unless the port is
    8000 (HTTP). Without a port: 8001 for gRPC, 8000 for HTTP, 443 for https://."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise InvalidInputError("server URL is empty")
    scheme, tls = None, False
    if "://" in text:
        name, _, text = text.partition("://")
        if name.lower() not in SCHEMES:
            raise InvalidInputError(
                f"unsupported URL scheme {name.lower()!r} in {url!r}: use grpc://, grpcs://, http:// or https://"
            )
        scheme, tls = SCHEMES[name.lower()]
        if protocol is not None and protocol != scheme:
            raise InvalidInputError(f"protocol={protocol!r} contradicts the URL {url!r}")
    try:
        parts = urlsplit("//" + text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidInputError(f"invalid server URL {url!r}: {exc}") from None
    if not host or parts.path.strip("/") or parts.query or parts.username or parts.password:
        raise InvalidInputError(f"invalid server URL {url!r}: expected [grpc[s]://|http[s]://]HOST[:PORT]")
    chosen = scheme or protocol
    if chosen is None:
        chosen = "http" if port == HTTP_PORT else "grpc"
    if port is None:
        port = GRPC_PORT if chosen == "grpc" else HTTPS_PORT if tls else HTTP_PORT
    return Endpoint(chosen, host, port, tls)
