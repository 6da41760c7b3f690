"""asyncio twin of `CaptionClient` over tritonclient.grpc.aio / tritonclient.http.aio.

The transport client is created on first use, inside the running loop (aiohttp and grpc.aio bind to it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
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


class AsyncCaptionClient(ClientBase):
    """Same API as CaptionClient with `async def`; use `async with` so the transport gets closed."""

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
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(url, protocol, timeout_s, model, english_model, translator_model, retry, transport)
        self.wait_ready_s = float(wait_ready_s or 0)
        self._lib: ModuleType | None = None
        self._client: Any = None
        self._closed = False

    async def __aenter__(self) -> AsyncCaptionClient:
        if self.wait_ready_s > 0:
            try:
                await self.wait_ready(self.wait_ready_s)
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- health ---------------------------------------------------------------------------------------
    async def is_ready(self, model: str | None = None) -> bool:
        try:
            return await self._probe(model or self.model)
        except CaptionError:
            return False

    async def wait_ready(self, timeout_s: float, model: str | None = None) -> None:
        name = model or self.model
        wait = ReadyWait(name, self.url, timeout_s)
        while not wait.done(await self._try_probe(name)):
            await asyncio.sleep(wait.delay())

    async def _try_probe(self, model: str) -> bool | CaptionError:
        try:
            return await self._probe(model)
        except (ServerUnreachableError, ModelNotReadyError) as exc:
            return exc

    async def _probe(self, model: str) -> bool:
        return bool(await self._call(lambda c: c.is_model_ready(model), self._probe_timeout_s))

    # -- captioning -----------------------------------------------------------------------------------
    async def caption(
        self, image: ImageInput, *, lang: str = "both", options: GenerationOptions | None = None
    ) -> CaptionResult:
        plan = self._plan(lang, options)
        data, source = load_image(image)
        return await self._caption_one(plan, data, source)

    async def caption_batch(
        self,
        images: Sequence[ImageInput],
        *,
        lang: str = "both",
        options: GenerationOptions | None = None,
        max_in_flight: int = 16,
        return_exceptions: bool = False,
    ) -> list[Any]:
        plan = self._plan(lang, options)
        limit = asyncio.Semaphore(wire.check_max_in_flight(max_in_flight))
        loaded = load_images(images, return_exceptions)

        async def one(item: tuple[bytes, str] | CaptionError) -> Any:
            if isinstance(item, CaptionError):
                return item
            async with limit:
                return await self._caption_one(plan, *item)

        results = await asyncio.gather(*(one(item) for item in loaded), return_exceptions=True)
        return finish(list(results), return_exceptions)

    async def _caption_one(self, plan: wire.CaptionPlan, data: bytes, source: str) -> CaptionResult:
        lib = self._transport()[0]
        start = time.perf_counter()
        result = await self._infer(plan.model, wire.image_inputs(lib, data), plan.outputs, plan.parameters)
        return wire.caption_result(result, plan, source, time.perf_counter() - start)

    # -- translation ----------------------------------------------------------------------------------
    async def translate(
        self, text: str | Sequence[str], *, options: GenerationOptions | None = None
    ) -> str | list[str]:
        texts, single = wire.check_texts(text)
        params = wire.translation_parameters(options)
        if not texts:
            return []
        lib = self._transport()[0]
        name = wire.translation_output()[0]

        slots = asyncio.Semaphore(wire.TEXT_REQUESTS_IN_FLIGHT)

        async def one(group: Sequence[str]) -> list[str]:
            async with slots:
                result = await self._infer(
                    self.translator_model, wire.text_inputs(lib, group), wire.translation_output(), params
                )
            return wire.decode_column(result, name)

        chunks = wire.chunks(texts, wire.TEXTS_PER_REQUEST)
        groups = await asyncio.gather(*(one(g) for g in chunks))
        flat = [t for group in groups for t in group]
        return flat[0] if single else flat

    # -- plumbing -------------------------------------------------------------------------------------
    def _transport(self) -> tuple[ModuleType, Any]:
        if self._closed:
            raise CaptionError("client is closed")
        if self._client is None:
            self._lib, self._client = _connect(self.endpoint, self.transport, self.timeout_s)
        assert self._lib is not None
        return self._lib, self._client

    async def _infer(
        self, model: str, inputs: list[Any], outputs: Sequence[str], parameters: dict[str, int]
    ) -> Any:
        lib = self._transport()[0]
        requested = wire.requested_outputs(lib, outputs)
        timeout_us = self._server_timeout_us
        delays = self.retry.delays()
        while True:
            try:
                return await self._call(
                    lambda c: c.infer(
                        model, inputs, outputs=requested, parameters=parameters or None, timeout=timeout_us
                    ),
                    self.timeout_s,
                )
            except ServerBusyError:
                delay = next(delays, None)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _call(self, fn: Callable[[Any], Awaitable[T]], timeout_s: float) -> T:
        """Bound every call with asyncio's clock: http.aio has no per-call client timeout of its own."""
        client = self._transport()[1]
        try:
            return await asyncio.wait_for(fn(client), timeout_s)
        except Exception as exc:
            mapped = map_exception(exc, url=self.url)
            if mapped is None:
                raise
            raise mapped from exc


def _connect(endpoint: Endpoint, transport: Transport, timeout_s: float) -> tuple[ModuleType, Any]:
    headers = transport.request_headers(endpoint.protocol)
    if endpoint.protocol == "grpc":
        import tritonclient.grpc.aio as lib

        client = lib.InferenceServerClient(endpoint.address, **transport.grpc_options())
        return lib, attach_headers(client, headers)
    import tritonclient.http.aio as lib

    client = lib.InferenceServerClient(
        endpoint.address, conn_timeout=timeout_s, **transport.http_aio_options()
    )
    return lib, attach_headers(client, headers)
