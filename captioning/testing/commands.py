"""`captioning make-fixtures`: the small offline checkpoints the tests and the offline demo use."""

from __future__ import annotations

import argparse
from pathlib import Path


def _fixtures(args: argparse.Namespace) -> int:
    from captioning.testing.fixtures import make_fixtures

    paths = make_fixtures(Path(args.output), seed=args.seed)
    print(f"captioner: {paths.blip}\ntranslator: {paths.mbart}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fixtures = sub.add_parser("make-fixtures", help="build small offline BLIP and mBART-50 test checkpoints")
    fixtures.add_argument("--output", required=True)
    fixtures.add_argument("--seed", type=int, default=0)
    fixtures.set_defaults(func=_fixtures)
