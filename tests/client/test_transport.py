"""`Transport` (TLS and headers) without a server: validation, what the URL implies, the exact options handed to
tritonclient's constructors (a recording stand-in for its client class), and the `caption` flags."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from captioning.client import (
    AsyncCaptionClient,
    CaptionClient,
    InvalidInputError,
    Transport,
    cli,
    parse_endpoint,
)
from captioning.client.transport import HeaderPlugin, parse_header

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pem(tmp_path: Path):
    def make(name: str) -> Path:
        path = tmp_path / name
        path.write_text(PEM)
        return path

    return make


# -- validation ------------------------------------------------------------------------------------------
def test_defaults_are_plain_and_immutable() -> None:
    transport = Transport()
    assert not transport.tls and transport.grpc_options() == {} and transport.http_options() == {}
    assert dict(transport.headers) == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        transport.ssl = True  # type: ignore[misc]
    headers = {"Authorization": "Bearer t"}
    frozen = Transport(headers=headers)
    headers["Authorization"] = "changed"
    assert frozen.headers["Authorization"] == "Bearer t"
    with pytest.raises(TypeError):
        frozen.headers["X"] = "y"  # type: ignore[index]
    assert Transport(headers={"A": "1"}) == Transport(headers={"A": "1"}) and hash(Transport()) is not None


def test_any_certificate_file_implies_tls(pem) -> None:
    assert Transport(ssl=True).tls
    assert Transport(root_certificates=pem("ca.pem")).tls
    mutual = Transport(private_key=pem("k.pem"), certificate_chain=pem("c.pem"))
    assert mutual.tls and mutual.grpc_options()["ssl"] is True


@pytest.mark.parametrize("field", ["root_certificates", "private_key", "certificate_chain"])
def test_missing_or_bad_certificate_files_are_named(field: str, tmp_path: Path, pem) -> None:
    pair = (
        {"private_key": pem("k.pem"), "certificate_chain": pem("c.pem")}
        if field != "root_certificates"
        else {}
    )
    missing = tmp_path / "missing.pem"
    with pytest.raises(InvalidInputError, match=r"missing\.pem: no such file"):
        Transport(**{**pair, field: missing})
    with pytest.raises(InvalidInputError, match="not a file"):
        Transport(**{**pair, field: tmp_path})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InvalidInputError, match=r"junk\.pem: not a PEM file"):
        Transport(**{**pair, field: str(junk)})


def test_mutual_tls_needs_key_and_chain_together(pem) -> None:
    with pytest.raises(InvalidInputError, match="both"):
        Transport(private_key=pem("k.pem"))
    with pytest.raises(InvalidInputError, match="both"):
        Transport(certificate_chain=pem("c.pem"))


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"X-Key": "a\r\nX-Injected: 1"}, "line break"),
        ({"X-Key": "a\nb"}, "line break"),
        ({"X-Key": "a\rb"}, "line break"),
        ({"X-Key\r\nInjected": "a"}, "invalid header name"),
        ({"Bad Name": "a"}, "invalid header name"),
        ({"Name:": "a"}, "invalid header name"),
        ({"": "a"}, "invalid header name"),
        ({"X-Key": 3}, "must be a string"),
        ({"Content-Length": "3"}, "set by the transport"),
        ({"Authorization": "a", "authorization": "b"}, "twice"),
    ],
)
def test_bad_headers_are_refused(headers: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Transport(headers=headers)


def test_header_values_stay_out_of_repr_and_errors() -> None:
    transport = Transport(headers={"Authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(transport) and "Authorization" in repr(transport)
    with pytest.raises(InvalidInputError) as exc:
        Transport(headers={"Authorization": "Bearer s3cret\r\n"})
    assert "s3cret" not in str(exc.value)
    assert "s3cret" not in repr(CaptionClient("localhost:1", transport=transport))


def test_grpc_metadata_is_lower_case_and_ascii() -> None:
    transport = Transport(headers={"Authorization": "Bearer t", "X-Captioning-Admin-Key": "k"})
    assert transport.request_headers("grpc") == {"authorization": "Bearer t", "x-captioning-admin-key": "k"}
    assert transport.request_headers("http") == {"Authorization": "Bearer t", "X-Captioning-Admin-Key": "k"}
    with pytest.raises(InvalidInputError, match="printable ASCII"):
        CaptionClient("localhost:1", transport=Transport(headers={"X-Name": "نص"}))
    with pytest.raises(InvalidInputError, match="gRPC metadata"):
        CaptionClient("localhost:1", transport=Transport(headers={"grpc-timeout": "1"}))
    CaptionClient("http://localhost:1", transport=Transport(headers={"X-Name!": "a"})).close()


# -- what the URL implies --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpcs://triton:9001", ("grpc", True, "triton:9001")),
        ("grpcs://triton", ("grpc", True, "triton:8001")),
        ("https://gateway", ("http", True, "gateway:443")),
        ("HTTPS://gateway:8443", ("http", True, "gateway:8443")),
        ("grpc://triton", ("grpc", False, "triton:8001")),
        ("http://triton", ("http", False, "triton:8000")),
    ],
)
def test_tls_schemes(url: str, expected: tuple) -> None:
    endpoint = parse_endpoint(url)
    assert (endpoint.protocol, endpoint.tls, endpoint.address) == expected
    assert endpoint.url.startswith(("grpcs://", "https://") if expected[1] else ("grpc://", "http://"))


@pytest.mark.parametrize("url", ["ftp://host", "user:pw@host:8001", "grpcs://host/path"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_endpoint(url)
    with pytest.raises(InvalidInputError, match="contradicts"):
        parse_endpoint("grpcs://host", "http")


def test_scheme_and_transport_agree_on_tls(certs) -> None:
    with CaptionClient("grpcs://localhost:1") as client:
        assert client.transport.ssl and client.url == "grpcs://localhost:1"
    with CaptionClient("grpc://localhost:1", transport=Transport(ssl=True)) as client:
        assert client.url == "grpcs://localhost:1"
    with CaptionClient("localhost:8000", transport=Transport(root_certificates=certs.ca)) as client:
        assert client.transport.tls and client.url == "https://localhost:8000"
    with CaptionClient("localhost:1") as client:
        assert not client.transport.tls and client.url == "grpc://localhost:1"
    assert AsyncCaptionClient("https://gw", transport=Transport()).transport.ssl
    with pytest.raises(InvalidInputError, match="Transport"):
        CaptionClient("localhost:1", transport={"ssl": True})  # type: ignore[arg-type]


# -- the options tritonclient's constructors get -----------------------------------------------------------
class Recorder:
    """Stands in for a tritonclient InferenceServerClient: records the constructor's keyword arguments, and
    runs the registered plugin on each call, as tritonclient does before it sends anything."""

    made: list[Recorder] = []

    def __init__(self, url: str, **kwargs) -> None:
        self.url, self.kwargs, self.plugin, self.calls = url, kwargs, None, []
        Recorder.made.append(self)

    def register_plugin(self, plugin) -> None:
        assert self.plugin is None
        self.plugin = plugin

    def _send(self, call: str, headers) -> None:
        from tritonclient._request import Request

        request = Request(headers)
        if self.plugin is not None:
            self.plugin(request)
        self.calls.append((call, dict(request.headers)))

    def is_model_ready(self, model, headers=None, **kwargs) -> bool:
        self._send("is_model_ready", headers)
        return True

    def infer(self, model, inputs, headers=None, **kwargs):
        self._send("infer", headers)
        raise ConnectionRefusedError(111, "recorded, not sent")

    def close(self) -> None:
        pass


@pytest.fixture
def recorder(monkeypatch):
    import tritonclient.grpc
    import tritonclient.http

    Recorder.made = []
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", Recorder)
    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", Recorder)
    return Recorder.made


def test_grpc_gets_tritonclients_own_tls_options(recorder, pem) -> None:
    ca, key, chain = pem("ca.pem"), pem("key.pem"), pem("chain.pem")
    CaptionClient("localhost:1").close()
    assert recorder[-1].kwargs == {} and recorder[-1].url == "localhost:1"
    transport = Transport(root_certificates=ca, private_key=key, certificate_chain=chain)
    CaptionClient("grpcs://localhost:1", transport=transport).close()
    assert recorder[-1].kwargs == {
        "ssl": True,
        "root_certificates": str(ca),  # tritonclient opens the files: paths, not PEM bytes
        "private_key": str(key),
        "certificate_chain": str(chain),
    }
    CaptionClient("grpcs://localhost:1").close()
    assert recorder[-1].kwargs == {
        "ssl": True,
        "root_certificates": None,  # gRPC's default roots
        "private_key": None,
        "certificate_chain": None,
    }


def test_http_gets_a_verifying_ssl_context(recorder, pem) -> None:
    import gevent.ssl

    ca, key, chain = pem("ca.pem"), pem("key.pem"), pem("chain.pem")
    CaptionClient("http://localhost:1").close()
    assert set(recorder[-1].kwargs) == {"concurrency", "connection_timeout", "network_timeout"}
    transport = Transport(root_certificates=ca, private_key=key, certificate_chain=chain)
    CaptionClient("https://localhost:1", transport=transport).close()
    kwargs = recorder[-1].kwargs
    assert kwargs["ssl"] is True and kwargs["insecure"] is False
    assert kwargs["ssl_options"] == {"ca_certs": str(ca), "certfile": str(chain), "keyfile": str(key)}
    assert kwargs["ssl_context_factory"] is gevent.ssl.create_default_context
    CaptionClient("https://localhost:1").close()
    assert recorder[-1].kwargs["ssl_options"] == {}  # the system's roots


@pytest.mark.parametrize("url", ["grpc://localhost:1", "http://localhost:1"])
def test_headers_go_on_readiness_probes_through_the_plugin(recorder, url: str) -> None:
    headers = {"Authorization": "Bearer t", "X-Captioning-Admin-Key": "k"}
    with CaptionClient(url, transport=Transport(headers=headers)) as client:
        assert client.is_ready() and client.is_ready("translator")
    expected = {k.lower(): v for k, v in headers.items()} if url.startswith("grpc") else headers
    assert recorder[-1].calls == [("is_model_ready", expected)] * 2
    assert isinstance(recorder[-1].plugin, HeaderPlugin) and "Bearer" not in repr(recorder[-1].plugin)
    CaptionClient(url).close()
    assert recorder[-1].plugin is None  # no headers, no plugin


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tritonclient's __del__
def test_http_ssl_contexts_verify_and_refuse_unloadable_files(pem) -> None:
    import ssl

    options = Transport(ssl=True).http_aio_options()
    assert options["ssl"] is True and isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname
    with pytest.raises(InvalidInputError, match=r"ca\.pem.*refused"):
        Transport(root_certificates=pem("ca.pem")).http_aio_options()  # a PEM header around junk
    with pytest.raises(InvalidInputError, match=r"ca\.pem.*refused"):
        CaptionClient("https://localhost:1", transport=Transport(root_certificates=pem("ca.pem")))


# -- the `caption` flags -----------------------------------------------------------------------------------
def test_parse_header() -> None:
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_header("X-Empty:") == ("X-Empty", "")
    for bad in ("no colon", ": value", "Bad Name: v"):
        with pytest.raises(InvalidInputError):
            parse_header(bad)


def test_cli_builds_one_transport(pem) -> None:
    ca, key, chain = pem("ca.pem"), pem("key.pem"), pem("chain.pem")
    args = cli.parse_args(
        ["a.jpg", "--url", "grpcs://h:1", "--root-cert", str(ca), "--client-cert", str(chain)]
        + ["--client-key", str(key), "--header", "Authorization: Bearer t", "--header", "X-A:1"]
    )
    assert args.transport == Transport(
        root_certificates=str(ca),
        private_key=str(key),
        certificate_chain=str(chain),
        headers={"Authorization": "Bearer t", "X-A": "1"},
    )
    assert cli.parse_args(["a.jpg", "--ssl"]).transport == Transport(ssl=True)
    assert cli.parse_args(["a.jpg"]).transport == Transport()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--header", "Authorization Bearer s3cret"], "expected a header as 'Name: value'"),
        (["--header", "A: 1", "--header", "a: s3cret"], "given twice"),
        (["--root-cert", "/nonexistent/ca.pem"], "/nonexistent/ca.pem: no such file"),
        (["--client-key", "/nonexistent/k.pem"], "both"),
    ],
)
def test_cli_refuses_bad_transport_flags(argv, message, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["a.jpg", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "s3cret" not in err


def test_cli_tls_failure_is_one_line_exit_2(certs, jpeg: Path) -> None:
    from fake_triton import start_grpc

    server, port, _ = start_grpc(certs)
    try:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(
            [str(jpeg), "--url", f"localhost:{port}", "--ssl", "--timeout", "5"], stdout=out, stderr=err
        )
    finally:
        server.stop(0)
    assert code == 2 and out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "TLS handshake failed" in lines[0] and "--root-cert" in lines[0]
