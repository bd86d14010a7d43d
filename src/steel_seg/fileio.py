"""Files on disk: atomic writes (a temp file in the target's folder, then `os.replace`) and JSON reads that
name the file.

Every checkpoint, model, manifest, rules file, report page and kernel script is written here, so a kill never
leaves half a file under the real name. Files get mode 0644 (a bare `mkstemp` file is 0600, which a Kaggle
upload or another user could not read). Every JSON file the kit reads back goes through `read_json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` (e.g. `torch.save`), then move the result onto `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
