"""Blocking client: one request per image, sent concurrently so Triton's dynamic batcher can group them.

The gRPC client is thread-safe. The HTTP client runs on gevent: use one `CaptionClient` per thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from captioning import contract
from captioning.client import wire
from captioning.client.base import ClientBase, ReadyWait, RetryPolicy, finish, load_images
from captioning.client.endpoint import Endpoint
from captioning.client.errors import (
    CaptionError,
    ModelNotReadyError,
    ServerBusyError,
    ServerUnreachableError,
    map_exception,
)
from captioning.client.images import ImageInput, load_image
from captioning.client.transport import Transport, attach_headers
from captioning.client.types import CaptionResult, GenerationOptions

T = TypeVar("T")
MAX_BATCH_SIZE = contract.MAX_BATCH_SIZE


class CaptionClient(ClientBase):
    """Caption images and translate text through the Triton models of docs/design.md."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        protocol: str | None = None,
        timeout_s: float = 60.0,
        wait_ready_s: float = 0,
        model: str = contract.ARABIC_MODEL,
        english_model: str = contract.ENGLISH_MODEL,
        translator_model: str = contract.TRANSLATOR_MODEL,
        http_concurrency: int = MAX_BATCH_SIZE,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(url, protocol, timeout_s, model, english_model, translator_model, retry, transport)
        self._lib, self._client = _connect(self.endpoint, self.transport, self.timeout_s, http_concurrency)
        self._closed = False
        if wait_ready_s and wait_ready_s > 0:
            try:
                self.wait_ready(wait_ready_s)
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> CaptionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # -- health ---------------------------------------------------------------------------------------
    def is_ready(self, model: str | None = None) -> bool:
        """True when `model` (default: the Arabic one) answers ready; False also when nothing answers."""
        try:
            return self._probe(model or self.model)
        except CaptionError:
            return False

    def wait_ready(self, timeout_s: float, model: str | None = None) -> None:
        """Poll until the model is ready; raise ServerUnreachableError or ModelNotReadyError at the deadline."""
        name = model or self.model
        wait = ReadyWait(name, self.url, timeout_s)
        while not wait.done(self._try_probe(name)):
            time.sleep(wait.delay())

    def _try_probe(self, model: str) -> bool | CaptionError:
        try:
            return self._probe(model)
        except (ServerUnreachableError, ModelNotReadyError) as exc:
            return exc

    def _probe(self, model: str) -> bool:
        self._check_open()
        kwargs: dict[str, Any] = {}
        if self.endpoint.protocol == "grpc":
            kwargs["client_timeout"] = self._probe_timeout_s
        try:
            return bool(self._client.is_model_ready(model, **kwargs))
        except Exception as exc:
            raise self._mapped(exc) from exc

    # -- captioning -----------------------------------------------------------------------------------
    def caption(
        self, image: ImageInput, *, lang: str = "both", options: GenerationOptions | None = None
    ) -> CaptionResult:
        plan = self._plan(lang, options)
        data, source = load_image(image)
        return self._caption_one(plan, data, source)

    def caption_batch(
        self,
        images: Sequence[ImageInput],
        *,
        lang: str = "both",
        options: GenerationOptions | None = None,
        max_in_flight: int = 16,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Results in input order. Without return_exceptions the first failure (in input order) is raised;
        bad inputs are refused before anything is sent."""
        plan = self._plan(lang, options)
        wire.check_max_in_flight(max_in_flight)
        loaded = load_images(images, return_exceptions)
        todo = [i for i, item in enumerate(loaded) if not isinstance(item, CaptionError)]

        def one(i: int) -> CaptionResult:
            data, source = loaded[i]  # type: ignore[misc]
            return self._caption_one(plan, data, source)

        outcomes = self._run_concurrently(one, todo, max_in_flight)
        results: list[Any] = list(loaded)
        for i, outcome in zip(todo, outcomes, strict=True):
            results[i] = outcome
        return finish(results, return_exceptions)

    def _caption_one(self, plan: wire.CaptionPlan, data: bytes, source: str) -> CaptionResult:
        start = time.perf_counter()
        result = self._infer(plan.model, wire.image_inputs(self._lib, data), plan.outputs, plan.parameters)
        return wire.caption_result(result, plan, source, time.perf_counter() - start)

    # -- translation ----------------------------------------------------------------------------------
    def translate(
        self, text: str | Sequence[str], *, options: GenerationOptions | None = None
    ) -> str | list[str]:
        """A str gives a str back; a sequence gives a list, one request per text, 16 in flight."""
        texts, single = wire.check_texts(text)
        params = wire.translation_parameters(options)
        if not texts:
            return []

        def one(group: Sequence[str]) -> list[str]:
            result = self._infer(
                self.translator_model, wire.text_inputs(self._lib, group), wire.translation_output(), params
            )
            return wire.decode_column(result, wire.translation_output()[0])

        groups = wire.chunks(texts, wire.TEXTS_PER_REQUEST)
        outcomes = finish(self._run_concurrently(one, groups, wire.TEXT_REQUESTS_IN_FLIGHT), False)
        flat = [t for group in outcomes for t in group]
        return flat[0] if single else flat

    # -- plumbing -------------------------------------------------------------------------------------
    def _infer(
        self, model: str, inputs: list[Any], outputs: Sequence[str], parameters: dict[str, int]
    ) -> Any:
        self._check_open()
        kwargs: dict[str, Any] = {
            "outputs": wire.requested_outputs(self._lib, outputs),
            "parameters": parameters or None,
            "timeout": self._server_timeout_us,
        }
        if self.endpoint.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        delays = self.retry.delays()
        while True:
            try:
                return self._client.infer(model, inputs, **kwargs)
            except Exception as exc:
                mapped = self._mapped(exc)
                delay = next(delays, None) if isinstance(mapped, ServerBusyError) else None
                if delay is None:
                    raise mapped from exc
                time.sleep(delay)

    def _mapped(self, exc: Exception) -> Exception:
        return map_exception(exc, url=self.url) or exc

    def _check_open(self) -> None:
        if self._closed:
            raise CaptionError("client is closed")

    def _run_concurrently(self, fn: Callable[[Any], T], items: Sequence[Any], limit: int) -> list[Any]:
        """fn over items, at most `limit` at once; each slot holds a value or the exception it raised."""
        if len(items) <= 1:
            return [_capture(fn, item) for item in items]
        if self.endpoint.protocol == "http":
            from gevent.pool import Pool  # geventhttpclient's sockets are cooperative, not thread-safe

            pool = Pool(min(limit, len(items)))
            greenlets = [pool.spawn(_capture, fn, item) for item in items]
            pool.join()
            return [g.value for g in greenlets]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix="caption") as ex:
            return list(ex.map(lambda item: _capture(fn, item), items))


def _capture(fn: Callable[[Any], T], item: Any) -> T | Exception:
    # Returning (not raising) keeps gevent from printing tracebacks of failed greenlets.
    try:
        return fn(item)
    except Exception as exc:
        return exc


def _connect(
    endpoint: Endpoint, transport: Transport, timeout_s: float, http_concurrency: int
) -> tuple[ModuleType, Any]:
    """Import only the transport in use: gRPC pulls in grpcio, HTTP pulls in gevent. Nothing connects yet."""
    headers = transport.request_headers(endpoint.protocol)
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as lib

        client = lib.InferenceServerClient(endpoint.address, **transport.grpc_options())
        return lib, attach_headers(client, headers)
    import ssl

    import tritonclient.http as lib

    try:
        client = lib.InferenceServerClient(
            endpoint.address,
            concurrency=max(1, http_concurrency),
            connection_timeout=timeout_s,
            network_timeout=timeout_s,
            **transport.http_options(),
        )
    except ssl.SSLError as exc:  # the SSL context is built here, from the certificate files
        raise transport.load_error(exc) from None
    return lib, attach_headers(client, headers)
