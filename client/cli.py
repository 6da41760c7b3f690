"""`caption IMAGE...` / `caption --text TEXT`: one line per result on stdout, one per failure on stderr.

Exit status: 0 all good, 1 some input failed, 2 the service itself is unusable (unreachable, model not
ready) or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from captioning.client.errors import (
    CaptionError,
    InvalidInputError,
    ModelNotReadyError,
    ServerUnreachableError,
)
from captioning.client.sdk import CaptionClient
from captioning.client.transport import Transport, parse_header
from captioning.client.types import LANGS, CaptionResult, GenerationOptions

EXIT_OK, EXIT_FAILED, EXIT_SERVICE = 0, 1, 2
# Images go out in slices so results appear while the rest are still in flight.
SLICE = 64


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="caption",
        description="Caption images (English and Arabic) or translate text through a Triton server.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="JPEG/PNG/WebP files to caption")
    p.add_argument("--text", action="append", metavar="TEXT", help="translate TEXT instead (repeatable)")
    p.add_argument(
        "--url", default="localhost:8001", help="[grpc[s]://|http[s]://]HOST:PORT (default %(default)s)"
    )
    p.add_argument("--protocol", choices=("grpc", "http"), help="override the protocol picked from --url")
    p.add_argument("--lang", choices=LANGS, default="both", help="captions to print (default %(default)s)")
    p.add_argument("--caption-num-beams", "--caption-beams", type=_positive_int, metavar="N")
    p.add_argument("--caption-max-new-tokens", type=_positive_int, metavar="N")
    p.add_argument("--translation-num-beams", "--translation-beams", type=_positive_int, metavar="N")
    p.add_argument("--translation-max-new-tokens", type=_positive_int, metavar="N")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S", help="per request, seconds")
    p.add_argument("--wait-ready", type=float, default=0.0, metavar="S", help="wait up to S s for the model")
    p.add_argument("--max-in-flight", type=_positive_int, default=16, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of tab-separated text")
    add_transport_arguments(p)
    return p


def _header(text: str) -> tuple[str, str]:
    try:
        return parse_header(text)
    except InvalidInputError as exc:  # the message names no value: headers often carry credentials
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_transport_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS and header flags, shared by `caption` and `captioning ui`; `transport_from_args` reads them."""
    group = parser.add_argument_group("connection (TLS, gateway headers)")
    group.add_argument(
        "--ssl", action="store_true", help="use TLS (implied by grpcs://, https:// and the certificate flags)"
    )
    group.add_argument(
        "--root-cert", metavar="FILE", help="PEM file of the CA that signed the server's certificate"
    )
    group.add_argument("--client-cert", metavar="FILE", help="PEM certificate chain, for mutual TLS")
    group.add_argument("--client-key", metavar="FILE", help="PEM private key, for mutual TLS")
    group.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="send this header with every request (repeatable), e.g. 'Authorization: Bearer ...'",
    )


def transport_from_args(args: argparse.Namespace) -> Transport:
    """The flags as one Transport; InvalidInputError names a missing or unreadable file."""
    headers: dict[str, str] = {}
    for name, value in args.header:
        if name.lower() in (known.lower() for known in headers):
            raise InvalidInputError(f"--header {name!r} is given twice")
        headers[name] = value
    return Transport(
        ssl=args.ssl,
        root_certificates=args.root_cert,
        private_key=args.client_key,
        certificate_chain=args.client_cert,
        headers=headers,
    )


def options_from_args(args: argparse.Namespace) -> GenerationOptions:
    return GenerationOptions(
        caption_num_beams=args.caption_num_beams,
        caption_max_new_tokens=args.caption_max_new_tokens,
        translation_num_beams=args.translation_num_beams,
        translation_max_new_tokens=args.translation_max_new_tokens,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.text and args.images:
        parser.error("give IMAGE files or --text, not both")
    if not args.text and not args.images:
        parser.error("nothing to do: give IMAGE files or --text TEXT")
    try:
        args.transport = transport_from_args(args)
    except InvalidInputError as exc:
        parser.error(str(exc))
    return args


def format_result(result: CaptionResult, lang: str, as_json: bool) -> str:
    if as_json:
        return json.dumps(result.to_dict(), ensure_ascii=False)
    columns = {
        "both": [result.english, result.arabic or ""],
        "en": [result.english],
        "ar": [result.arabic or ""],
    }
    return "\t".join([result.source, *(_one_line(c) for c in columns[lang])])


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    args = parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        with CaptionClient(
            args.url,
            protocol=args.protocol,
            timeout_s=args.timeout,
            wait_ready_s=args.wait_ready,
            transport=args.transport,
        ) as client:
            if args.text:
                return _translate(client, args, out)
            return _caption(client, args, out, err)
    except (ServerUnreachableError, ModelNotReadyError) as exc:
        return _service_error(exc, err)
    except CaptionError as exc:
        print(f"caption: error: {exc}", file=err)
        return EXIT_FAILED


def _caption(client: CaptionClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = options_from_args(args)
    status = EXIT_OK
    for start in range(0, len(args.images), SLICE):
        batch = args.images[start : start + SLICE]
        results = client.caption_batch(
            batch, lang=args.lang, options=options, max_in_flight=args.max_in_flight, return_exceptions=True
        )
        service = next(
            (r for r in results if isinstance(r, (ServerUnreachableError, ModelNotReadyError))), None
        )
        for path, result in zip(batch, results, strict=True):
            if isinstance(result, CaptionResult):
                print(format_result(result, args.lang, args.json), file=out, flush=True)
            elif not isinstance(result, (ServerUnreachableError, ModelNotReadyError)):
                print(f"caption: {_name_file(path, result)}", file=err, flush=True)
                status = EXIT_FAILED
        if service is not None:
            return _service_error(service, err)
    return status


def _translate(client: CaptionClient, args: argparse.Namespace, out: TextIO) -> int:
    translations = client.translate(list(args.text), options=options_from_args(args))
    for text, translation in zip(args.text, translations, strict=True):
        if args.json:
            line = json.dumps({"text": text, "translation": translation}, ensure_ascii=False)
        else:
            line = _one_line(translation)
        print(line, file=out, flush=True)
    return EXIT_OK


def _service_error(exc: CaptionError, err: TextIO) -> int:
    hint = ""
    if isinstance(exc, ServerUnreachableError):
        hint = (
            "check --ssl/--root-cert"
            if "TLS" in str(exc)
            else "is the server running? check --url/--protocol"
        )
    print(f"caption: error: {exc}" + (f" ({hint})" if hint else ""), file=err, flush=True)
    return EXIT_SERVICE


def _name_file(path: str, exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    return message if message.startswith(f"{path}:") else f"{path}: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
