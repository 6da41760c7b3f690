"""`captioning`: one command line over the packages; each package registers its own subcommands.

Registration imports nothing heavy: `captioning --help` and the serving commands do not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

LOG = logging.getLogger("captioning")

# In the order `captioning --help` lists them.
COMMAND_MODULES = (
    "captioning.export.commands",  # export, trim-vocab, build-engines
    "captioning.server.commands",  # serve, demo
    "captioning.testing.commands",  # make-fixtures
    "captioning.training.commands",  # train-*, attention-map, evaluate
    "captioning.ui.commands",  # ui
    "captioning.bench.commands",  # bench, make-bench-checkpoints, verify, gpu-check
    "captioning.bench.traffic_commands",  # soak, fuzz, overload
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioning", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for users; the traceback with -v
        if args.verbose:
            raise
        LOG.error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
