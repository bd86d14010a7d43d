"""`steel-seg` command line: one thin module per subcommand over the library code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each name is a module `steel_seg.cli.<name>` with `add_parser(subparsers)` that registers its subcommand
# and sets `func=run` (a callable taking the parsed args and returning an exit code).
COMMANDS = ("score", "validate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steel-seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"steel_seg.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
