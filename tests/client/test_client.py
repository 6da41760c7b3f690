"""Client SDK and `caption` CLI: everything that needs no server. Against the real server, see
tests/integration/test_serving.py."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from captioning.client import (
    AsyncCaptionClient,
    CaptionClient,
    CaptionError,
    CaptionResult,
    CaptionTimeoutError,
    GenerationOptions,
    InvalidInputError,
    ModelNotReadyError,
    ServerBusyError,
    ServerUnreachableError,
    parse_endpoint,
    wire,
)
from captioning.client.errors import from_triton_exception, map_exception
from captioning.client.images import load_image

ROOT = Path(__file__).resolve().parents[2]


# -- URL and protocol selection ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("localhost:8001", None, ("grpc", "localhost:8001")),
        ("localhost:8000", None, ("http", "localhost:8000")),
        ("localhost:9000", None, ("grpc", "localhost:9000")),
        ("localhost", None, ("grpc", "localhost:8001")),
        ("localhost", "http", ("http", "localhost:8000")),
        ("localhost:8001", "http", ("http", "localhost:8001")),
        ("grpc://10.0.0.2:8000", None, ("grpc", "10.0.0.2:8000")),
        ("http://triton:8001", None, ("http", "triton:8001")),
        ("HTTP://triton", None, ("http", "triton:8000")),
        ("http://triton:8000", "http", ("http", "triton:8000")),
        ("[::1]:8000", None, ("http", "[::1]:8000")),
    ],
)
def test_parse_endpoint(url: str, protocol: str | None, expected: tuple[str, str]) -> None:
    endpoint = parse_endpoint(url, protocol)
    assert (endpoint.protocol, endpoint.address) == expected
    assert endpoint.url == f"{expected[0]}://{expected[1]}"


@pytest.mark.parametrize(
    ("url", "protocol"),
    [
        ("ftp://host:8000", None),
        ("https://host:8000", "grpc"),
        ("grpc://host:8001", "http"),
        ("", None),
        ("host:8001", "tcp"),
        ("host:x", None),
    ],
)
def test_parse_endpoint_rejects(url: str, protocol: str | None) -> None:
    with pytest.raises(InvalidInputError):
        parse_endpoint(url, protocol)


def test_client_picks_protocol_without_connecting() -> None:
    with CaptionClient("localhost:8000") as http, CaptionClient("localhost:8001") as grpc:
        assert http.protocol == "http" and type(http._client).__module__.startswith("tritonclient.http")
        assert grpc.protocol == "grpc" and type(grpc._client).__module__.startswith("tritonclient.grpc")
    with pytest.raises(InvalidInputError):
        CaptionClient("localhost:8001", timeout_s=0)


# -- options -------------------------------------------------------------------------------------------
def test_options_map_to_parameters_and_validate() -> None:
    assert GenerationOptions().to_parameters() == {}
    opts = GenerationOptions(caption_num_beams=3, translation_max_new_tokens=20)
    assert opts.to_parameters() == {"caption_num_beams": 3, "translation_max_new_tokens": 20}
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(InvalidInputError, match="translation_num_beams"):
            GenerationOptions(translation_num_beams=bad).validate()  # type: ignore[arg-type]


def test_plans_route_models_outputs_and_parameters() -> None:
    opts = GenerationOptions(caption_num_beams=2, caption_max_new_tokens=9, translation_num_beams=4)
    kw = {"arabic_model": "arabic_caption", "english_model": "english_caption"}
    both = wire.caption_plan("both", opts, **kw)
    assert both.model == "arabic_caption" and both.outputs == ("caption_en", "caption_ar")
    assert both.parameters == {
        "caption_num_beams": 2,
        "caption_max_new_tokens": 9,
        "translation_num_beams": 4,
    }
    assert wire.caption_plan("ar", None, **kw).model == "arabic_caption"
    en = wire.caption_plan("en", opts, **kw)
    assert en.model == "english_caption" and en.outputs == ("caption_en",)
    assert en.parameters == {"caption_num_beams": 2, "caption_max_new_tokens": 9}
    assert wire.translation_parameters(opts) == {"translation_num_beams": 4}
    with pytest.raises(InvalidInputError, match="lang"):
        wire.caption_plan("fr", None, **kw)


# -- input coercion ------------------------------------------------------------------------------------
def test_paths_are_sent_untouched(jpeg: Path) -> None:
    raw = jpeg.read_bytes()
    assert load_image(jpeg) == (raw, str(jpeg))
    assert load_image(str(jpeg)) == (raw, str(jpeg))
    assert load_image(bytearray(raw)) == (raw, "<bytes>")
    assert load_image(memoryview(raw)) == (raw, "<bytes>")


def test_pil_images_are_encoded_as_png() -> None:
    image = Image.new("RGB", (5, 4), (1, 2, 3))
    data, source = load_image(image)
    assert source == "<PIL image>" and data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (5, 4) and decoded.getpixel((2, 2)) == (1, 2, 3)
    cmyk, _ = load_image(Image.new("CMYK", (3, 3)))  # PNG cannot hold CMYK
    assert Image.open(io.BytesIO(cmyk)).mode == "RGB"


def test_bad_inputs_are_refused_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InvalidInputError, match="nope.jpg: no such file"):
        load_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty.png: file is empty"):
        load_image(empty)
    with pytest.raises(InvalidInputError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(InvalidInputError, match="<bytes>: image is empty"):
        load_image(b"")
    with pytest.raises(InvalidInputError, match="unsupported image type int"):
        load_image(42)  # type: ignore[arg-type]


# -- wire format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["tritonclient.grpc", "tritonclient.http"])
def test_bytes_tensor_has_batch_dim(module: str) -> None:
    lib = pytest.importorskip(module)
    tensor = wire.text_inputs(lib, ["a cat", "قطة"])[0]
    assert tensor.name() == "text" and tensor.datatype() == "BYTES" and list(tensor.shape()) == [2, 1]
    image = wire.image_inputs(lib, b"\xff\xd8jpeg")[0]
    assert image.name() == "image" and list(image.shape()) == [1, 1]


class FakeResult:
    def __init__(self, **outputs: np.ndarray) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


def test_outputs_decode_as_utf8() -> None:
    result = FakeResult(
        caption_en=np.array([[b"a dog runs"]], dtype=object),
        caption_ar=np.array([["كلب يجري".encode()]], dtype=object),
    )
    plan = wire.caption_plan("both", None, arabic_model="a", english_model="e")
    assert wire.caption_result(result, plan, "x.jpg", 0.5) == CaptionResult(
        "a dog runs", "كلب يجري", "x.jpg", 0.5
    )
    en_plan = wire.caption_plan("en", None, arabic_model="a", english_model="e")
    assert wire.caption_result(result, en_plan, "x.jpg", 0.5).arabic is None
    with pytest.raises(CaptionError, match="translation"):
        wire.decode_column(result, "translation")


def test_translate_input_checks() -> None:
    assert wire.check_texts("hi") == (["hi"], True)
    assert wire.check_texts(("a", "b")) == (["a", "b"], False)
    with pytest.raises(InvalidInputError, match=r"text\[1\]"):
        wire.check_texts(["a", 3])  # type: ignore[list-item]
    assert [len(c) for c in wire.chunks(list(range(35)), 16)] == [16, 16, 3]


# -- exception mapping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("msg", "status", "expected"),
    [
        (
            "failed to connect to all addresses; Connection refused",
            "StatusCode.UNAVAILABLE",
            ServerUnreachableError,
        ),
        ("bad image bytes: cannot identify image file", "StatusCode.INVALID_ARGUMENT", InvalidInputError),
        ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", CaptionTimeoutError),
        (
            "Request for unknown model: 'arabic_caption' is not found",
            "StatusCode.NOT_FOUND",
            ModelNotReadyError,
        ),
        (
            "Request for unknown model: 'arabic_caption' version 1 is not at ready state",
            "StatusCode.UNAVAILABLE",
            ModelNotReadyError,
        ),
        ("caption_num_beams must be in 1..8, got 12", "400", InvalidInputError),
        ("Request for unknown model: 'translator' is not found", "404", ModelNotReadyError),
        ("Request for unknown model: 'x' has no available versions", "400", ModelNotReadyError),
        ("Server not ready", "503", ServerUnreachableError),
        ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", ServerBusyError),
        ("Request timeout expired", "StatusCode.UNAVAILABLE", ServerBusyError),
        (
            "Exceeds the queue timeout: a request arriving now would wait about 14.0 s",
            "StatusCode.UNAVAILABLE",
            ServerBusyError,
        ),
        (
            "Exceeds the request's timeout: it would wait about 0.0 s",
            "StatusCode.UNAVAILABLE",
            ServerBusyError,
        ),
        ("Exceeds the running requests' timeouts: joining now", "StatusCode.UNAVAILABLE", ServerBusyError),
        ("Exceeds maximum queue size", "503", ServerBusyError),
        (  # a request that reached a crashed stub: the watchdog reloads the model, so it is retryable
            "in ensemble 'arabic_caption', Stub process 'caption_generator_0_0' is not healthy.",
            "StatusCode.INTERNAL",
            ServerBusyError,
        ),
        ("segfault in backend", "StatusCode.INTERNAL", CaptionError),
        ("oops", "500", CaptionError),
    ],
)
def test_triton_exceptions_map_to_hierarchy(msg: str, status: str, expected: type[CaptionError]) -> None:
    mapped = from_triton_exception(InferenceServerException(msg, status=status), url="grpc://h:1")
    assert type(mapped) is expected
    assert mapped.status == status
    if expected in (InvalidInputError, ModelNotReadyError, CaptionError):
        assert str(mapped) == msg  # the server's own words reach the caller
    else:
        assert msg in str(mapped) and "grpc://h:1" in str(mapped)


class _BusyTwice:
    """A transport whose first answers are Triton's load shedding."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls, self.timeouts = busy, 0, []

    def infer(self, model, inputs, **kwargs):
        self.calls += 1
        self.timeouts.append(kwargs["timeout"])
        if self.calls <= self.busy:
            raise InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
        return FakeResult(translation=np.array([[b"ok"]], dtype=object))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("retries", "busy", "succeeds"), [(0, 1, False), (2, 2, True), (2, 3, False)])
def test_shed_requests_are_retried_a_bounded_number_of_times(retries, busy, succeeds, monkeypatch) -> None:
    from captioning.client import RetryPolicy

    monkeypatch.setattr("time.sleep", lambda s: None)
    client = CaptionClient("localhost:1", timeout_s=7, retry=RetryPolicy(retries=retries, backoff_s=0.01))
    client._client = transport = _BusyTwice(busy)
    if succeeds:
        assert client.translate("a dog") == "ok"
    else:
        with pytest.raises(ServerBusyError, match="overloaded and shed the request"):
            client.translate("a dog")
    assert transport.calls == min(busy, retries) + 1
    assert set(transport.timeouts) == {7_000_000}  # the client's deadline travels with the request


def test_retry_backoff_grows_and_is_capped() -> None:
    from captioning.client import RetryPolicy

    delays = list(RetryPolicy(retries=6, backoff_s=1.0, max_backoff_s=4.0).delays())
    assert len(delays) == 6 and all(0.5 <= d <= 4.0 for d in delays)
    assert max(delays[:1]) <= 1.0 and min(delays[3:]) >= 2.0


def test_transport_exceptions_map_to_hierarchy() -> None:
    assert isinstance(map_exception(ConnectionRefusedError(111, "refused")), ServerUnreachableError)
    assert isinstance(map_exception(socket.gaierror(-2, "no such host")), ServerUnreachableError)
    timeout = map_exception(TimeoutError("timed out"))
    assert isinstance(timeout, CaptionTimeoutError) and isinstance(timeout, TimeoutError)
    assert isinstance(map_exception(asyncio.TimeoutError()), CaptionTimeoutError)
    assert map_exception(KeyError("bug")) is None
    assert issubclass(InvalidInputError, ValueError) and issubclass(ServerUnreachableError, ConnectionError)


# -- against a port nobody listens on ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_fails_fast(scheme: str, dead_port: int, jpeg: Path) -> None:
    start = time.monotonic()
    with CaptionClient(f"{scheme}://127.0.0.1:{dead_port}", timeout_s=10) as client:
        assert client.is_ready() is False
        with pytest.raises(ServerUnreachableError, match=str(dead_port)):
            client.caption(jpeg)
        with pytest.raises(ServerUnreachableError):
            client.translate("a cat")
        results = client.caption_batch([jpeg, jpeg.with_name("gone.jpg"), b"x"], return_exceptions=True)
        assert [type(r) for r in results] == [
            ServerUnreachableError,
            InvalidInputError,
            ServerUnreachableError,
        ]
        with pytest.raises(InvalidInputError, match="gone.jpg"):  # refused before anything is sent
            client.caption_batch([jpeg, jpeg.with_name("gone.jpg")])
    with pytest.raises(ServerUnreachableError):
        CaptionClient(f"{scheme}://127.0.0.1:{dead_port}", wait_ready_s=0.5)
    assert time.monotonic() - start < 8
    with pytest.raises(CaptionError, match="closed"):
        client.caption(jpeg)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_async_unreachable_server_fails_fast(scheme: str, dead_port: int, jpeg: Path) -> None:
    async def run() -> None:
        async with AsyncCaptionClient(f"{scheme}://127.0.0.1:{dead_port}", timeout_s=10) as client:
            assert await client.is_ready() is False
            with pytest.raises(ServerUnreachableError):
                await client.caption(jpeg, lang="en")
            results = await client.caption_batch([jpeg, b""], return_exceptions=True)
            assert [type(r) for r in results] == [ServerUnreachableError, InvalidInputError]
        with pytest.raises(ServerUnreachableError):
            async with AsyncCaptionClient(f"{scheme}://127.0.0.1:{dead_port}", wait_ready_s=0.3):
                pass

    start = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - start < 8


def test_import_pulls_in_no_heavy_packages() -> None:
    code = (
        "import sys, captioning.client, captioning.client.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == ""
