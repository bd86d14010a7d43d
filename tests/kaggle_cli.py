"""The real Kaggle CLI's parser, without running a command: for tests of every `kaggle ...` line we document
or print.

`kaggle.cli.main()` builds the whole parser (every subcommand, as `kaggle` on a shell does), parses
`sys.argv`, then authenticates and calls the API. `parse` runs it with the line as `sys.argv` and stops it
right after its `parse_args` returns, so nothing past the parser runs: no credentials are read and nothing is
sent. An argparse error (what a user would see: `error: the following arguments are required: ...`) becomes
`KaggleLineError` with that message. Importing `kaggle` itself tries to authenticate; `load` imports it with
no credentials in reach and the network refused, so that attempt fails quietly as on any fresh machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import socket
import sys
from types import ModuleType

import pytest


class KaggleLineError(ValueError):
    """The Kaggle CLI's parser refused a line; the message is its own."""


class _Parsed(Exception):
    """Carries the namespace out of `kaggle.cli.main` before it goes on to authenticate."""


def offline(monkeypatch: pytest.MonkeyPatch, home) -> None:
    """No credentials (a fresh home, no KAGGLE_* variables) and no network (a connection is an error)."""
    for name in [n for n in __import__("os").environ if n.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def load() -> ModuleType:
    """`kaggle.cli`, imported quietly (its import-time authentication prints help when it finds nothing)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        reason = "the kaggle package (a test dependency: pip install -e '.[dev]')"
        pytest.importorskip("kaggle", reason=reason)
        import kaggle.cli
    return kaggle.cli


def parse(cli: ModuleType, line: str) -> argparse.Namespace:
    """The namespace the Kaggle CLI parses from a shell `line` (`kaggle ...`), or KaggleLineError."""
    argv = shlex.split(line, comments=True)
    if not argv or argv[0] != "kaggle":
        raise KaggleLineError(f"not a kaggle command: {line!r}")
    original = argparse.ArgumentParser.parse_args

    def stop_after_parsing(parser, args=None, namespace=None):
        raise _Parsed(original(parser, args, namespace))

    errors, saved = io.StringIO(), sys.argv
    sys.argv = argv
    try:
        with (
            pytest.MonkeyPatch.context() as patch,
            contextlib.redirect_stderr(errors),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            patch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
            cli.main()
    except _Parsed as parsed:
        return parsed.args[0]
    except SystemExit:
        message = errors.getvalue().strip().splitlines()
        raise KaggleLineError(f"{line}: {message[-1] if message else 'refused'}") from None
    finally:
        sys.argv = saved
    raise KaggleLineError(f"{line}: the Kaggle CLI ran past its parser")
