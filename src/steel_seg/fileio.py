"""Files on disk: atomic writes (a temp file in the target's folder, then `os.replace`), JSON reads that
name the file, whole folders published in one rename, and a full disk reported as such.

Every checkpoint, model, manifest, rules file, report page and kernel script is written here, so a kill never
leaves half a file under the real name; a folder that must appear whole (an OOF dir, a pseudo-label round, a
weights dir) is built in a staging sibling and moved into place when complete. Files get mode 0644 (a bare
`mkstemp` file is 0600, which a Kaggle upload or another user could not read). Every JSON file the kit reads
back goes through `read_json`.

What a folder-writing command may replace (`Output`, `check_output`): only an output of its own kind (its
marker file present, nothing but its own entries), only with `--overwrite`, and never a folder that is or
holds one of its inputs. An earlier output stays whole until the new one is in place; a run killed between
the two renames of `publish_dir` leaves it in a hidden `.<name>.old-*`, which the next run moves back.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
# A write that fails with less than this free in its folder failed for want of space (torch.save says only
# "unexpected pos"; safetensors wraps the errno in its own text).
LOW_SPACE = 1 << 20


class DiskFullError(OSError):
    """No space left on the device for a named file; `errno` is ENOSPC."""

    def __init__(self, path: str | os.PathLike, needed: int | None, free: int, at_least: bool = False):
        need = f"{'at least ' if at_least else ''}{_size(needed)} needed, " if needed else ""
        super().__init__(f"no space left on device writing {path} ({need}{_size(free)} free)")
        self.errno = errno.ENOSPC


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the file system of `path` (or of its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def require_space(path: str | os.PathLike, needed: int) -> None:
    """DiskFullError naming `path` when its file system has less than `needed` bytes free (checked before a
    large write, e.g. each checkpoint, so a full disk is a message and never a half-written file)."""
    free = free_bytes(Path(path).parent)
    if free < needed:
        raise DiskFullError(path, needed, free)


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC anywhere in its chain, or (writers that lose
    the errno) hardly any space left in `folder` while the failed temp file still holds its bytes."""
    chain: BaseException | None = exc
    while chain is not None:
        if getattr(chain, "errno", None) == errno.ENOSPC or "No space left on device" in str(chain):
            return True
        chain = chain.__cause__ or chain.__context__
    return isinstance(exc, Exception) and free_bytes(folder) < LOW_SPACE


def write_with(path: str | os.PathLike, write: Callable[[Path], None], size: int | None = None) -> Path:
    """Call `write(tmp_path)` (e.g. `torch.save`), then move the result onto `path`; returns `path`.

    `size`: the bytes the file will take, when known: too little free space is a DiskFullError before
    anything is written. A write that fails for want of space is a DiskFullError naming `path` (the old file
    and no temp file stay). Temp files of `path` left by a writer that was killed (`.<name>.*.tmp`) are
    removed first: one writer per target file, as everywhere in the kit.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    if size is not None:
        require_space(path, size)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        full = _out_of_space(exc, path.parent)
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(
                path, size or written, free_bytes(path.parent), at_least=size is None
            ) from exc
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data), size=len(data))


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- folders published whole
@dataclass(frozen=True)
class Output:
    """A kind of folder a command writes whole: what it is called, every entry it writes, and the entry
    whose presence marks a finished one (written last)."""

    what: str
    entries: frozenset[str]
    marker: str

    def foreign(self, folder: Path) -> list[str]:
        """The entries of `folder` this kind does not write (all of them when the marker is absent)."""
        names = sorted(p.name for p in folder.iterdir())
        return names if self.marker not in names else [n for n in names if n not in self.entries]


def check_not_over(target: str | os.PathLike, inputs: Mapping[str, str | os.PathLike]) -> None:
    """ValueError when `target` is one of the `inputs` (what -> path) or a folder above one: replacing it
    would replace them."""
    target = Path(target)
    resolved = target.resolve()
    for what, path in inputs.items():
        full = Path(path).resolve()
        if full == resolved or resolved in full.parents:
            where = "is" if full == resolved else "holds"
            raise ValueError(f"{target}: {where} the {what} {path}; write the output elsewhere")


def check_output(
    target: str | os.PathLike,
    overwrite: bool,
    kind: Output,
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Whether a command may write the folder `target` whole (returned as a Path); ValueError naming it when
    not: it is or holds an input, it is a file, it holds files without `overwrite`, or it holds anything but
    a finished output of `kind` (then `overwrite` does not help: it removes only what the command writes).
    An earlier copy left by a run killed while replacing `target` is moved back first (`recover`)."""
    target = Path(target)
    check_not_over(target, inputs or {})
    recover(target)
    _check_folder(target, kind.what)
    if not target.is_dir() or not any(target.iterdir()):
        return target
    foreign = kind.foreign(target)
    if foreign:
        raise ValueError(
            f"{target}: holds files that are not {kind.what}'s ({', '.join(foreign[:5])}); the command "
            "replaces only its own output, even with --overwrite: choose another folder"
        )
    if not overwrite:
        raise ValueError(
            f"{target}: already holds {kind.what}; pass --overwrite to replace it, or choose another"
        )
    return target


def _check_folder(target: Path, what: str) -> None:
    """ValueError when `target` is a file, or a symbolic link (a rename would replace the link, not the
    folder it points to)."""
    if target.is_symlink():
        raise ValueError(f"{target}: is a symbolic link (to {os.readlink(target)}); give the folder itself")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file, not a folder for {what}")


def _staging(target: Path) -> Path:
    """The empty hidden sibling `.<name>.partial` (one left by a killed run is discarded)."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def staging_dir(
    target: str | os.PathLike,
    overwrite: bool,
    kind: Output,
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """An empty hidden sibling `.<name>.partial` in which to build the folder `target` whole, once
    `check_output` allows it. Nothing at `target` changes until `publish_dir`."""
    staging = _staging(check_output(target, overwrite, kind, inputs))
    staging.mkdir(parents=True)
    return staging


def staging_copy(target: str | os.PathLike, inputs: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """A hidden sibling `.<name>.partial` holding what the folder `target` holds now (hard links where the
    file system allows: no space, no time), in which a command changes only its own entries before
    `publish_dir` swaps it in whole: for folders that also hold the user's files (a weights dir)."""
    target = Path(target)
    check_not_over(target, inputs or {})
    recover(target)
    _check_folder(target, "the output")
    staging = _staging(target)
    if target.is_dir():
        shutil.copytree(target, staging, symlinks=True, copy_function=_link_or_copy)
    else:
        staging.mkdir(parents=True)
    return staging


@contextmanager
def published(
    target: str | os.PathLike,
    overwrite: bool,
    kind: Output,
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> Iterator[Path]:
    """`with published(target, ...) as staging:` write the folder's files into `staging`; it replaces
    `target` whole when the block ends (`staging_dir`, `publish_dir`), and is discarded when it raises."""
    staging = staging_dir(target, overwrite, kind, inputs)
    try:
        yield staging
    except BaseException:
        discard(staging)
        raise
    publish_dir(staging, target)


def _link_or_copy(source: str, dest: str) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def discard(staging: Path) -> None:
    """Remove a staging folder whose output will not be published (a failed run)."""
    shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: Path, target: str | os.PathLike) -> Path:
    """Move a finished staging folder onto `target`; an older `target` is replaced only now, whole.

    The older one is first renamed to a hidden `.<name>.old-<random>` of this run's own, and removed only
    once the new one is in place: a kill between the two renames leaves it there for `recover`.
    """
    target = Path(target)
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}") if target.exists() else None
    if old is not None:
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old)
    return target


def earlier_copies(target: Path) -> list[Path]:
    """Hidden `.<name>.old*` siblings of `target`: earlier copies that a killed `publish_dir` left."""
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.old*"))


def recover(target: str | os.PathLike) -> None:
    """Undo a `publish_dir` killed between its renames: with `target` missing and one earlier copy left,
    move that copy back (logged). An earlier copy beside an existing `target` is kept and named (it may be
    all that is left of someone's work); several with `target` missing are an error naming them."""
    target = Path(target)
    olds = earlier_copies(target)
    if not olds:
        return
    names = ", ".join(p.name for p in olds)
    if target.exists():
        log.warning("%s: kept %s, left by a run killed while replacing it; remove it when not needed", target,
                    names)  # fmt: skip
        return
    if len(olds) > 1:
        raise ValueError(f"{target}: missing, with several earlier copies left by killed runs ({names}) in "
                         f"{target.parent}: move the one to keep back to {target.name}")  # fmt: skip
    os.replace(olds[0], target)
    log.warning("%s: restored from %s (a run was killed while replacing it)", target, olds[0].name)
