"""Small exception hierarchy, so callers never need to parse tritonclient's errors themselves."""

from __future__ import annotations

import asyncio
import http.client
import re


class CaptionError(Exception):
    """Base of every error the SDK raises; `status` is the transport status when the server answered."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class ServerUnreachableError(CaptionError, ConnectionError):
    """Nothing answered at the URL (refused, unresolvable host, connection dropped)."""


class ModelNotReadyError(CaptionError):
    """The server answered but the model is unknown, still loading or unavailable."""


class InvalidInputError(CaptionError, ValueError):
    """The server rejected the request (INVALID_ARG) or the client refused to send it."""


class CaptionTimeoutError(CaptionError, TimeoutError):
    """No answer within the client's timeout."""


class ServerBusyError(CaptionError):
    """The server shed the request (its queue is full, or the request waited past its queue timeout): retry
    later, with backoff (`CaptionClient(retries=...)` does), or send less."""


_MODEL_MISSING = re.compile(
    r"unknown model|not at ready state|no available versions|model '[^']*' is not (ready|found|loaded)",
    re.IGNORECASE,
)
_NOT_FOUND = {"StatusCode.NOT_FOUND", "404"}
_INVALID = {"StatusCode.INVALID_ARGUMENT", "400", "StatusCode.UNIMPLEMENTED"}
_TIMEOUT = {"StatusCode.DEADLINE_EXCEEDED", "408", "504"}
_UNAVAILABLE = {"StatusCode.UNAVAILABLE"}
# Triton's scheduler and the in-flight engines shed with UNAVAILABLE and these messages; other UNAVAILABLEs mean nothing is listening.
_SHED = re.compile(
    r"exceeds maximum queue size|request timeout expired|timeout expired|exceeds the queue timeout|exceeds the request's timeout|exceeds the running requests' timeouts",
    re.IGNORECASE,
)


# A request that reached a model instance whose stub process had just died: Triton answers INTERNAL, but the
# server's watchdog reloads that model at once (docs/reliability.md), so a retry is served.
_RESTARTING = re.compile(r"stub process '[^']*' is not healthy", re.IGNORECASE)


def from_triton_exception(exc: Exception, *, url: str = "") -> CaptionError:
    """Map a tritonclient `InferenceServerException` (gRPC or HTTP flavour) onto the hierarchy."""
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    message = exc.message() if callable(getattr(exc, "message", None)) else None
    message = message or str(exc)
    status = str(status) if status is not None else None
    if status in _TIMEOUT:
        return CaptionTimeoutError(f"timed out waiting for {url or 'the server'}: {message}", status=status)
    # Checked before UNAVAILABLE: Triton answers UNAVAILABLE for a model that is not ready yet.
    if status in _NOT_FOUND or _MODEL_MISSING.search(message):
        return ModelNotReadyError(message, status=status)
    if _RESTARTING.search(message):
        return ServerBusyError(
            f"{url or 'the server'} is restarting a stage that crashed; retry: {message}", status=status
        )
    if _SHED.search(message):
        return ServerBusyError(
            f"{url or 'the server'} is overloaded and shed the request: {message}", status=status
        )
    if status in _UNAVAILABLE or status == "503":
        return unreachable(message, url=url, status=status)
    if status in _INVALID:
        return InvalidInputError(message, status=status)
    return CaptionError(message, status=status)


def map_exception(exc: BaseException, *, url: str = "") -> CaptionError | None:
    """Translate any transport-level exception; None means "not ours, let it propagate"."""
    if isinstance(exc, CaptionError):
        return exc
    if type(exc).__name__ == "InferenceServerException":
        return from_triton_exception(exc, url=url)  # type: ignore[arg-type]
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return CaptionTimeoutError(
            f"timed out waiting for {url or 'the server'}: {str(exc) or 'no answer in time'}"
        )
    if isinstance(exc, (OSError, http.client.HTTPException)) or _is_aiohttp_connection_error(exc):
        # HTTPException: geventhttpclient's "connection closed" and parse errors, e.g. a TLS port spoken to
        # in plain HTTP.
        return unreachable(str(exc) or type(exc).__name__, url=url)
    return None


# A failed TLS handshake, as gRPC (BoringSSL), Python's ssl and aiohttp word it.
_TLS_FAILURE = re.compile(
    r"handshake|\bssl|\btls|certificate|wrong.version.number|unknown.protocol", re.IGNORECASE
)
# What a plain client sees when the port speaks TLS: the server hangs up on the first bytes.
_CLOSED_EARLY = re.compile(r"socket closed|connection closed|connection reset|disconnected", re.IGNORECASE)


def unreachable(message: str, *, url: str = "", status: str | None = None) -> ServerUnreachableError:
    """Nothing usable answered; a TLS failure says so and names what to check."""
    where = url or "the server"
    if _TLS_FAILURE.search(message):
        return ServerUnreachableError(
            f"cannot reach Triton at {where}: the TLS handshake failed ({message}). Check that the server "
            "speaks TLS on that port, that its certificate names the URL's host and is signed by a CA the "
            "client trusts (Transport(root_certificates=...), --root-cert; default: the system's roots)",
            status=status,
        )
    text = f"cannot reach Triton at {where}: {message}"
    if _CLOSED_EARLY.search(message) and not where.startswith(("grpcs://", "https://")):
        secure = "https://" if where.startswith("http") else "grpcs://"
        text += f" (if the server speaks TLS on that port, use {secure} or --ssl)"
    return ServerUnreachableError(text, status=status)


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    """aiohttp's ServerDisconnectedError & co. are not OSErrors; match without importing aiohttp."""
    return any(
        cls.__module__.startswith("aiohttp") and cls.__name__ == "ClientConnectionError"
        for cls in type(exc).__mro__
    )
