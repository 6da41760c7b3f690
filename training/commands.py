"""Registers the training and evaluation subcommands of `captioning`.

Each module's `register(subparsers)` must import nothing heavy at module level: `captioning --help` and the
serving commands should not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib

MODULES = (
    "captioning.training.captioner",
    "captioning.training.translator",
    "captioning.training.baselines",
    "captioning.training.evaluate_cli",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in MODULES:
        importlib.import_module(name).register(subparsers)
