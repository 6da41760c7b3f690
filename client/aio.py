"""asyncio twin of `CaptionClient` over tritonclient.grpc.aio / tritonclient.http.aio.

The transport client is created on first use, inside the running loop (aiohttp and grpc.aio bind to it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from captioning.client import wire
from captioning.client.endpoint import Endpoint, parse_endpoint
from captioning.client.errors import (
    CaptionError,
    InvalidInputError,
    ModelNotReadyError,
    ServerUnreachableError,
    map_exception,
)
from captioning.client.images import ImageInput, load_image
from captioning.client.sdk import READY_POLL_S, READY_PROBE_TIMEOUT_S
from captioning.client.types import (
    ARABIC_MODEL,
    ENGLISH_MODEL,
    MAX_BATCH_SIZE,
    TRANSLATOR_MODEL,
    CaptionResult,
    GenerationOptions,
    check_lang,
)

T = TypeVar("T")


class AsyncCaptionClient:
    """Same API as CaptionClient with `async def`; use `async with` so the transport gets closed."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        protocol: str | None = None,
        timeout_s: float = 60.0,
        wait_ready_s: float = 0,
        model: str = ARABIC_MODEL,
        english_model: str = ENGLISH_MODEL,
        translator_model: str = TRANSLATOR_MODEL,
    ) -> None:
        self.endpoint: Endpoint = parse_endpoint(url, protocol)
        self.timeout_s = wire.check_timeout(timeout_s)
        self.wait_ready_s = float(wait_ready_s or 0)
        self.model = model
        self.english_model = english_model
        self.translator_model = translator_model
        self._lib: ModuleType | None = None
        self._client: Any = None
        self._closed = False

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def protocol(self) -> str:
        return self.endpoint.protocol

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

    def __repr__(self) -> str:
        return f"AsyncCaptionClient({self.url!r}, model={self.model!r}, timeout_s={self.timeout_s})"

    # -- health ---------------------------------------------------------------------------------------
    async def is_ready(self, model: str | None = None) -> bool:
        try:
            return await self._probe(model or self.model)
        except CaptionError:
            return False

    async def wait_ready(self, timeout_s: float, model: str | None = None) -> None:
        name = model or self.model
        deadline = time.monotonic() + timeout_s
        last: CaptionError | None = None
        while True:
            try:
                if await self._probe(name):
                    return
                last = ModelNotReadyError(f"model {name!r} is not ready at {self.url}")
            except (ServerUnreachableError, ModelNotReadyError) as exc:
                last = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                assert last is not None
                raise last
            await asyncio.sleep(min(READY_POLL_S, remaining))

    async def _probe(self, model: str) -> bool:
        timeout = min(self.timeout_s, READY_PROBE_TIMEOUT_S)
        return bool(await self._call(lambda c: c.is_model_ready(model), timeout))

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
        loaded: list[tuple[bytes, str] | CaptionError] = []
        for image in images:
            try:
                loaded.append(load_image(image))
            except InvalidInputError as exc:
                if not return_exceptions:
                    raise
                loaded.append(exc)

        async def one(item: tuple[bytes, str] | CaptionError) -> Any:
            if isinstance(item, CaptionError):
                return item
            async with limit:
                return await self._caption_one(plan, *item)

        results = await asyncio.gather(*(one(item) for item in loaded), return_exceptions=True)
        return _finish(list(results), return_exceptions)

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

        async def one(group: Sequence[str]) -> list[str]:
            result = await self._infer(
                self.translator_model, wire.text_inputs(lib, group), wire.translation_output(), params
            )
            return wire.decode_column(result, name)

        groups = await asyncio.gather(*(one(g) for g in wire.chunks(texts, MAX_BATCH_SIZE)))
        flat = [t for group in groups for t in group]
        return flat[0] if single else flat

    # -- plumbing -------------------------------------------------------------------------------------
    def _plan(self, lang: str, options: GenerationOptions | None) -> wire.CaptionPlan:
        return wire.caption_plan(
            check_lang(lang), options, arabic_model=self.model, english_model=self.english_model
        )

    def _transport(self) -> tuple[ModuleType, Any]:
        if self._closed:
            raise CaptionError("client is closed")
        if self._client is None:
            self._lib, self._client = _connect(self.endpoint, self.timeout_s)
        assert self._lib is not None
        return self._lib, self._client

    async def _infer(
        self, model: str, inputs: list[Any], outputs: Sequence[str], parameters: dict[str, int]
    ) -> Any:
        lib = self._transport()[0]
        requested = wire.requested_outputs(lib, outputs)
        return await self._call(
            lambda c: c.infer(model, inputs, outputs=requested, parameters=parameters or None), self.timeout_s
        )

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


def _finish(results: list[Any], return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        for item in results:
            if isinstance(item, BaseException):
                raise item
    return results


def _connect(endpoint: Endpoint, timeout_s: float) -> tuple[ModuleType, Any]:
    if endpoint.protocol == "grpc":
        import tritonclient.grpc.aio as lib

        return lib, lib.InferenceServerClient(endpoint.address)
    import tritonclient.http.aio as lib

    return lib, lib.InferenceServerClient(endpoint.address, conn_timeout=timeout_s)
