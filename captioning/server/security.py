"""Who may change the server: the admin key that Triton's control plane asks for, and gRPC TLS.

Triton serves its control plane (loading and unloading models, with uploaded files; registering shared memory;
trace and log settings) on the same ports as inference. The launcher restricts those APIs to requests
that carry `contract.ADMIN_KEY_HEADER` with a secret value, so a client that can reach the ports can infer and read
metadata but cannot change the server (docs/security.md). The key is the operator's (a file or the environment),
or a random one per start that only the launcher and its watchdog know. It is never logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)

# Triton's names for the APIs that change the server. Health, metadata, model config, inference and statistics
# stay open: clients read model configs, and perf_analyzer refuses to measure without statistics (which change
# nothing and count what the metrics port already exports; docs/security.md).
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
# Triton looks for the header of a restricted gRPC protocol under this prefix in the call's metadata.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
KEY_ENV, KEY_FILE_ENV = "CAPTIONING_ADMIN_KEY", "CAPTIONING_ADMIN_KEY_FILE"
# The key travels inside one command-line flag (`apis:header=key`): no separators, no whitespace.
_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,512}")
_REDACTED = "<admin key>"
# What a server inside a pod or container binds: there the Service, NetworkPolicy or port mapping decides who
# reaches it (docs/security.md). Everything else binds loopback unless the operator says otherwise.
EVERY_ADDRESS = "0.0.0.0"  # nosec B104 # the containers' bind address, chosen on purpose
ANY_ADDRESS = (EVERY_ADDRESS, "", "::")


class SecurityError(ValueError):
    """An admin key or TLS file the server cannot use; the message names it (never the key's value)."""


@dataclasses.dataclass(frozen=True)
class AdminKey:
    value: str = dataclasses.field(repr=False)
    source: str  # where it came from, for the log: a file's path, the variable's name, or "generated"

    @classmethod
    def generate(cls) -> AdminKey:
        return cls(secrets.token_urlsafe(32), "generated")

    @property
    def headers(self) -> dict[str, str]:
        """For an HTTP request to a restricted API."""
        return {contract.ADMIN_KEY_HEADER: self.value}

    @property
    def grpc_headers(self) -> dict[str, str]:
        """For a gRPC call to a restricted protocol (tritonclient's `headers=` become call metadata)."""
        return {GRPC_HEADER_PREFIX + contract.ADMIN_KEY_HEADER: self.value}

    def server_args(self) -> list[str]:
        apis = ",".join(RESTRICTED_APIS)
        grant = f"{contract.ADMIN_KEY_HEADER}={self.value}"
        return [f"--http-restricted-api={apis}:{grant}", f"--grpc-restricted-protocol={apis}:{grant}"]

    def redact(self, text: str) -> str:
        return text.replace(self.value, _REDACTED)


def _checked(value: str, source: str) -> AdminKey:
    value = value.strip()
    if not _KEY.fullmatch(value):
        raise SecurityError(
            f"the admin key from {source} must be 16-512 characters of letters, digits and . _ ~ + / - "
            "(for example `openssl rand -hex 32`)"
        )
    return AdminKey(value, source)


def read_key_file(path: Path) -> AdminKey:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SecurityError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    return _checked(text, str(path))


def resolve_admin_key(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> AdminKey:
    """The operator's key (`--admin-key-file`, then $CAPTIONING_ADMIN_KEY_FILE, then $CAPTIONING_ADMIN_KEY), or a
    random one for this start."""
    if path is not None:
        return read_key_file(path)
    if environ.get(KEY_FILE_ENV):
        if not Path(environ[KEY_FILE_ENV]).exists():
            # An optional Secret that was never created (deploy/k8s): nobody administers this server, so the
            # control plane stays closed to everyone behind a random key.
            LOG.warning(
                "no admin key file at $%s=%s: using a random key, the control plane is closed to everyone",
                KEY_FILE_ENV,
                environ[KEY_FILE_ENV],
            )
            return AdminKey.generate()
        return read_key_file(Path(environ[KEY_FILE_ENV]))
    if environ.get(KEY_ENV):
        return _checked(environ[KEY_ENV], f"${KEY_ENV}")
    return AdminKey.generate()


@dataclasses.dataclass(frozen=True)
class GrpcTls:
    """gRPC over TLS (Triton's `--grpc-use-ssl`); with `client_ca`, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def validate(self) -> None:
        for name, path in (("certificate", self.cert), ("key", self.key), ("client CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise SecurityError(f"the gRPC TLS {name} {path} does not exist")

    def server_args(self) -> list[str]:
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return args


def local_address(host: str) -> str:
    """Where the launcher itself reaches a server bound to `host` (all addresses: through loopback)."""
    return "127.0.0.1" if host in ANY_ADDRESS else host


def redacted(args: Sequence[str], key: AdminKey | None) -> str:
    line = " ".join(args)
    return key.redact(line) if key is not None else line
