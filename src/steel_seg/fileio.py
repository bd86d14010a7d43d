"""Files on disk: atomic writes (a temp file in the target's folder, then `os.replace`) and JSON reads that
name the file.

Every checkpoint, model, manifest, rules file, report page and kernel script is written here, so a kill never
leaves half a file under the real name; a folder that must appear whole (an OOF dir) is built in a staging
sibling and moved into place when complete. Files get mode 0644 (a bare `mkstemp` file is 0600, which a Kaggle
upload or another user could not read). Every JSON file the kit reads back goes through `read_json`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` (e.g. `torch.save`), then move the result onto `path`; returns `path`.

    Temp files of `path` left by a writer that was killed (`.<name>.*.tmp`) are removed first: one writer
    per target file, as everywhere in the kit.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """`obj` as indented JSON with a final newline."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of `path`; ValueError naming the file and `what` it should hold when it is missing,
    unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: invalid {what}: not readable JSON ({exc})") from None


def load_json(
    path: str | os.PathLike, what: str, parse: Callable[[Any], T], error: type[ValueError] = ValueError
) -> T:
    """`parse(read_json(path))`: the typed content of a JSON file the kit wrote. Any problem — missing, not
    JSON, a missing key, a bad value — is `error` naming the file and `what` it should hold."""
    try:
        data = read_json(path, what)
    except ValueError as exc:
        raise error(str(exc)) from None
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise error(f"{path}: invalid {what}: {exc}") from exc


def staging_dir(target: str | os.PathLike, overwrite: bool, what: str) -> Path:
    """An empty hidden sibling `.<name>.partial` in which to build the folder `target` whole.

    ValueError naming `target` when it already holds files and `overwrite` is off. A staging folder left by a
    killed run is discarded. Nothing at `target` changes until `publish_dir`.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"{target}: already holds {what}; pass --overwrite to replace it, or choose another")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file, not a folder for {what}")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: Path, target: str | os.PathLike) -> Path:
    """Move a finished staging folder onto `target`; an older `target` is replaced only now, whole."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
