"""How the SDK reaches the server: TLS (server authentication, optionally mutual) and extra request headers.

    CaptionClient("grpcs://triton:8001", transport=Transport(root_certificates="ca.pem"))
    CaptionClient("https://gateway", transport=Transport(headers={"Authorization": "Bearer ..."}))

The options map onto tritonclient's own: gRPC's `ssl`/`root_certificates`/`private_key`/`certificate_chain`
(file paths, read by tritonclient), HTTP's `ssl`/`ssl_options`/`ssl_context_factory` (geventhttpclient) and
http.aio's `ssl_context` (aiohttp). Headers go on every request through a tritonclient plugin, so readiness
probes carry them as well as inference; gRPC sends them as metadata, keys lower-cased.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from captioning.client.errors import InvalidInputError

# RFC 9110 field names (a "token"); gRPC metadata keys are stricter still (checked for gRPC clients only).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_GRPC_KEY = re.compile(r"[0-9a-z_.\-]+")
_GRPC_VALUE = re.compile(r"[\x20-\x7e]*")
_FORBIDDEN_IN_VALUE = ("\r", "\n", "\0")
# Headers the transports write themselves: a second copy would corrupt the request's framing.
_RESERVED = frozenset({"content-length", "transfer-encoding", "content-type", "te", "connection"})
_FILES = {
    "root_certificates": "root certificate",
    "private_key": "private key",
    "certificate_chain": "certificate chain",
}


@dataclasses.dataclass(frozen=True)
class Transport:
    """TLS and headers of a client's connection.

    ssl: use TLS (implied by a grpcs:// or https:// URL and by any certificate file given here).
    root_certificates: PEM file of the CA that signed the server's certificate; None: the system's roots.
    private_key, certificate_chain: PEM files of the client's own key and certificate, for mutual TLS
        (both or neither).
    headers: sent with every request (inference, readiness probes, metadata), e.g. a gateway's
        `Authorization`. Their values stay out of `repr`: they are usually credentials.
    """

    ssl: bool = False
    root_certificates: str | Path | None = None
    private_key: str | Path | None = None
    certificate_chain: str | Path | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ssl, bool):
            raise InvalidInputError(f"Transport.ssl must be True or False, got {self.ssl!r}")
        for name, what in _FILES.items():
            _check_pem(getattr(self, name), what)
        if (self.private_key is None) != (self.certificate_chain is None):
            raise InvalidInputError(
                "mutual TLS needs both the client's private key and its certificate chain, or neither"
            )
        object.__setattr__(self, "headers", MappingProxyType(check_headers(self.headers)))

    @property
    def tls(self) -> bool:
        return self.ssl or any(getattr(self, name) is not None for name in _FILES)

    def __repr__(self) -> str:
        files = "".join(
            f", {name}={str(getattr(self, name))!r}" for name in _FILES if getattr(self, name) is not None
        )
        names = ", ".join(self.headers)
        return f"Transport(ssl={self.tls}{files}, headers=[{names}])"

    # -- what each tritonclient constructor takes ------------------------------------------------------
    def grpc_options(self) -> dict[str, Any]:
        """Keyword arguments of tritonclient.grpc(.aio).InferenceServerClient: it opens the files itself."""
        if not self.tls:
            return {}
        return {"ssl": True, **{name: _path(getattr(self, name)) for name in _FILES}}

    def http_options(self) -> dict[str, Any]:
        """Keyword arguments of tritonclient.http.InferenceServerClient (geventhttpclient): a default SSL
        context (certificate and host name verified) built from `ssl_options`."""
        if not self.tls:
            return {}
        import gevent.ssl

        options: dict[str, Any] = {}
        if self.root_certificates is not None:
            options["ca_certs"] = _path(self.root_certificates)
        if self.certificate_chain is not None:
            options["certfile"] = _path(self.certificate_chain)
            options["keyfile"] = _path(self.private_key)
        return {
            "ssl": True,
            "ssl_options": options,
            "ssl_context_factory": gevent.ssl.create_default_context,
            "insecure": False,
        }

    def http_aio_options(self) -> dict[str, Any]:
        """Keyword arguments of tritonclient.http.aio.InferenceServerClient (aiohttp): an SSL context."""
        if not self.tls:
            return {}
        import ssl

        try:
            context = ssl.create_default_context(cafile=_path(self.root_certificates))
            if self.certificate_chain is not None:
                context.load_cert_chain(_path(self.certificate_chain), _path(self.private_key))
        except ssl.SSLError as exc:
            raise self.load_error(exc) from None
        return {"ssl": True, "ssl_context": context}

    def load_error(self, exc: Exception) -> InvalidInputError:
        """The error for certificate files that exist but that the TLS library refuses."""
        files = ", ".join(str(getattr(self, name)) for name in _FILES if getattr(self, name) is not None)
        reason = getattr(exc, "reason", None) or exc
        return InvalidInputError(f"{files}: the TLS library refused these certificate files ({reason})")

    def request_headers(self, protocol: str) -> dict[str, str]:
        """The headers as the protocol sends them; gRPC metadata keys are lower-case and ASCII."""
        if protocol != "grpc":
            return dict(self.headers)
        metadata = {}
        for name, value in self.headers.items():
            key = name.lower()
            if not _GRPC_KEY.fullmatch(key) or key.startswith("grpc-"):
                raise InvalidInputError(f"header {name!r} cannot be sent as gRPC metadata")
            if not _GRPC_VALUE.fullmatch(value):
                raise InvalidInputError(f"the value of header {name!r} must be printable ASCII for gRPC")
            metadata[key] = value
        return metadata


class HeaderPlugin:
    """A tritonclient client plugin: tritonclient calls it before every request it sends, whichever method."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)

    def __call__(self, request: Any) -> None:
        request.headers = {**(request.headers or {}), **self.headers}

    def __repr__(self) -> str:
        return f"HeaderPlugin([{', '.join(self.headers)}])"


def attach_headers(client: Any, headers: Mapping[str, str]) -> Any:
    if headers:
        client.register_plugin(HeaderPlugin(headers))
    return client


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of the headers, each name a valid field name and no value able to split the request."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidInputError(f"headers must be a mapping of names to values, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise InvalidInputError(f"invalid header name {name!r}")
        if not isinstance(value, str):
            raise InvalidInputError(f"the value of header {name!r} must be a string")
        if any(c in value for c in _FORBIDDEN_IN_VALUE):
            raise InvalidInputError(f"the value of header {name!r} contains a line break or NUL: refused")
        if name.lower() in _RESERVED:
            raise InvalidInputError(f"header {name!r} is set by the transport itself")
        if name.lower() in seen:
            raise InvalidInputError(f"header {name!r} is given twice")
        seen.add(name.lower())
        checked[name] = value
    return checked


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' (as curl's -H takes it) into (name, value); the value's surrounding spaces dropped."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise InvalidInputError("expected a header as 'Name: value'")
    name, value = name.strip(), value.strip()
    check_headers({name: value})
    return name, value


def _check_pem(path: str | Path | None, what: str) -> None:
    if path is None:
        return
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidInputError(f"the {what} must be a file path, got {path!r}")
    file = Path(path)
    if not file.exists():
        raise InvalidInputError(f"{path}: no such file (the {what})")
    if not file.is_file():
        raise InvalidInputError(f"{path}: not a file (the {what})")
    try:
        head = file.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in head:
        raise InvalidInputError(f"{path}: not a PEM file (the {what})")


def _path(value: str | Path | None) -> str | None:
    return None if value is None else str(value)
