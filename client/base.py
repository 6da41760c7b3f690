"""What the sync and async clients share: configuration, request plans, image loading, readiness deadlines.

Only the transport differs between `CaptionClient` (threads or gevent) and `AsyncCaptionClient` (asyncio), so
everything that is not I/O lives here once.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

from captioning import contract
from captioning.client import wire
from captioning.client.endpoint import Endpoint, parse_endpoint
from captioning.client.errors import CaptionError, InvalidInputError, ModelNotReadyError
from captioning.client.images import ImageInput, load_image
from captioning.client.transport import Transport
from captioning.client.types import GenerationOptions, check_lang

READY_POLL_S = 0.25
READY_PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of requests the server shed (`ServerBusyError`), with jittered exponential backoff.
    Nothing else is retried: a bad input or a failure inside the server would fail again."""

    retries: int = 0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.retries):
            yield min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


class ClientBase:
    """Endpoint, TLS and headers, timeout and model names of a client; subclasses open the connection."""

    def __init__(
        self,
        url: str,
        protocol: str | None,
        timeout_s: float,
        model: str = contract.ARABIC_MODEL,
        english_model: str = contract.ENGLISH_MODEL,
        translator_model: str = contract.TRANSLATOR_MODEL,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.endpoint, self.transport = resolve_transport(parse_endpoint(url, protocol), transport)
        self.transport.request_headers(self.endpoint.protocol)  # a header gRPC cannot carry fails here
        self.timeout_s = wire.check_timeout(timeout_s)
        self.retry = retry or RetryPolicy()
        self.model = model
        self.english_model = english_model
        self.translator_model = translator_model

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def protocol(self) -> str:
        return self.endpoint.protocol

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, model={self.model!r}, timeout_s={self.timeout_s})"

    def _plan(self, lang: str, options: GenerationOptions | None) -> wire.CaptionPlan:
        return wire.caption_plan(
            check_lang(lang), options, arabic_model=self.model, english_model=self.english_model
        )

    @property
    def _probe_timeout_s(self) -> float:
        return min(self.timeout_s, READY_PROBE_TIMEOUT_S)

    @property
    def _server_timeout_us(self) -> int:
        """The client's deadline, sent with every request: the server sheds it rather than queue it past then."""
        return int(self.timeout_s * 1_000_000)


def resolve_transport(endpoint: Endpoint, transport: Transport | None) -> tuple[Endpoint, Transport]:
    """TLS when either side asks for it: a grpcs:// or https:// URL, or a Transport with ssl or certificates."""
    if transport is None:
        transport = Transport()
    if not isinstance(transport, Transport):
        raise InvalidInputError(f"transport must be a Transport, got {type(transport).__name__}")
    if endpoint.tls and not transport.ssl:
        transport = dataclasses.replace(transport, ssl=True)
    if transport.tls and not endpoint.tls:
        endpoint = dataclasses.replace(endpoint, tls=True)
    return endpoint, transport


class ReadyWait:
    """The deadline of one `wait_ready` call: each probe's outcome goes to `done`, which raises the last
    failure once the deadline has passed."""

    def __init__(self, model: str, url: str, timeout_s: float) -> None:
        self.model, self.url = model, url
        self.deadline = time.monotonic() + timeout_s

    def done(self, outcome: bool | CaptionError) -> bool:
        if outcome is True:
            return True
        last = outcome or ModelNotReadyError(f"model {self.model!r} is not ready at {self.url}")
        if self.deadline - time.monotonic() <= 0:
            raise last
        return False

    def delay(self) -> float:
        return max(0.0, min(READY_POLL_S, self.deadline - time.monotonic()))


def load_images(
    images: Sequence[ImageInput], return_exceptions: bool
) -> list[tuple[bytes, str] | CaptionError]:
    """Every image read before anything is sent; a bad one raises, or stays in its slot as the error."""
    loaded: list[tuple[bytes, str] | CaptionError] = []
    for image in images:
        try:
            loaded.append(load_image(image))
        except InvalidInputError as exc:
            if not return_exceptions:
                raise
            loaded.append(exc)
    return loaded


def finish(results: list[Any], return_exceptions: bool) -> list[Any]:
    """Results in input order; without return_exceptions the first failure (in input order) is raised."""
    if not return_exceptions:
        for item in results:
            if isinstance(item, BaseException):
                raise item
    return results
