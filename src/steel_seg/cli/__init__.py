"""`steel-seg` command line: one thin module per subcommand over the library code.

May import: competition, fileio, progress, workers, formats, models, postprocess, engine, train, workflow,
synthetic, report.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
import threading
from urllib.parse import urlsplit

# name -> one-line help. Each name is a module `steel_seg.cli.<name>` ("-" spelt "_") with
# `add_parser(subparsers)` that registers its subcommand and sets `func=run` (a callable taking the parsed
# args, returning an exit code). It raises on bad input; `main` prints the one-line message (exit 2).
# Only the chosen subcommand's module is imported, so `steel-seg score` never pays for torch.
COMMANDS = {
    "synth": "write a Severstal-like synthetic data set",
    "folds": "multilabel-stratified folds that keep near-duplicates together",
    "train": "train a model from a YAML config (one GPU, CPU, or torchrun)",
    "encoder-weights": "export a pretrained encoder (smp's hub/cache) to a file for offline use",
    "oof": "predict the held-out fold of a training run",
    "tune": "grid-search post-processing rules on OOF predictions",
    "report": "EDA and evaluation reports (PNG figures + one HTML page)",
    "manifest": "collect trained model dirs into the weights dir and its manifest.json",
    "predict": "predict a submission with the inference engine",
    "pseudo": "pseudo-label unlabelled images with the ensemble (a train.csv of the sure ones)",
    "score": "the competition's mean Dice of a submission against truth",
    "validate": "check a submission against a sample_submission.csv",
    "experiment": "plan, run or show an experiment file: the whole workflow, resumable",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `command`; the others are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="steel-seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if command in (None, name):
            importlib.import_module(f"steel_seg.cli.{name.replace('-', '_')}").add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


# The commands that may download pretrained encoder weights from the Hugging Face hub, and how long `main`
# waits to learn whether the hub can be reached at all before one of them starts.
HUB_COMMANDS = ("train", "encoder-weights")
HUB_PROBE_S = 3.0


def offline_unless_hub_reachable(command: str | None, timeout: float = HUB_PROBE_S) -> bool:
    """For a command that may use the hub, with HF_HUB_OFFLINE unset: when the hub's host cannot be reached
    within `timeout` seconds, set HF_HUB_OFFLINE=1 (before huggingface_hub is imported), so that cached
    weights load at once instead of after huggingface_hub's connection retries (~30 s on a machine whose
    connections hang). Returns whether it did; online machines are left as they are."""
    if command not in HUB_COMMANDS or "HF_HUB_OFFLINE" in os.environ:
        return False
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    reached: list[bool] = []

    def connect() -> None:  # on a thread: a hanging DNS look-up is bounded too
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    if reached:
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    print(f"steel-seg {command}: the Hugging Face hub ({host}) cannot be reached: working offline from the "
          "cache (HF_HUB_OFFLINE=1). Set HF_HUB_OFFLINE=1 yourself to skip this check, or =0 to insist "
          "on the hub.", file=sys.stderr)  # fmt: skip
    return True


# What bad input raises anywhere in the library (a file, a value, a device that cannot be used; KeyError: an
# unknown name such as an architecture): one line for the user, never a traceback.
USER_ERRORS = (OSError, ValueError, KeyError)
USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input prints `steel-seg <command>: <what is wrong>` and exits 2."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    offline_unless_hub_reachable(chosen)
    # An unknown or missing command imports nothing: argparse then prints the list or the error.
    args = build_parser(chosen if chosen in COMMANDS else "").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"steel-seg {args.command}: {message(exc)}", file=sys.stderr)
        return USAGE_ERROR


def message(exc: BaseException) -> str:
    """The error's text (a KeyError's without the quotes `str` adds)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


if __name__ == "__main__":
    sys.exit(main())
