"""What a step's inputs and outputs are, as short strings that change when their content does.

A file: its sha256, recomputed only when its size or modification time differs from the cached one (the
cache, `OUT/steps/hashes.json`, makes `plan` of a finished experiment cost stat calls, not reads of its
gigabytes of weights). A folder of images: the sha256 of its files' names and sizes (the 12,568 train
JPEGs in milliseconds; a replaced image of the same size goes unseen), listed once per process while the
folder's mtime stays (the 24 steps of the gold recipe read the two image folders 18 times). A source tree
(`tree`): the sha256 of every `.py` file's path and content, for the kernel build that embeds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from steel_seg import fileio

FILE, LISTING, TREE = "file", "listing", "tree"


class Fingerprints:
    """Fingerprints of files and folders, file hashes cached by (size, mtime_ns) in `cache_path`."""

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        self.cache: dict[str, list] = {}
        if cache_path.is_file():
            try:
                self.cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):  # a lost cache only costs the hashing again
                self.cache = {}
        self.changed = False
        self.listings: dict[tuple[str, int], str | None] = {}

    def of(self, kind: str, path: str | Path) -> str | None:
        """The fingerprint of `path` as a `kind` (FILE, LISTING, TREE); None when it does not exist."""
        return {FILE: self.file, LISTING: self.listing, TREE: self.tree}[kind](Path(path))

    def file(self, path: Path) -> str | None:
        """sha256 of the file's content (cached while its size and mtime stay); None when missing."""
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        cached = self.cache.get(key)
        if cached and cached[:2] == stamp:
            return cached[2]
        digest = fileio.sha256_file(path)
        self.cache[key] = [*stamp, digest]
        self.changed = True
        return digest

    def listing(self, folder: Path) -> str | None:
        """`listing(folder)`, remembered while the folder's own mtime (names added or removed) stays."""
        try:
            key = (str(folder.resolve()), folder.stat().st_mtime_ns)
        except OSError:
            return None
        if key not in self.listings:
            self.listings[key] = listing(folder)
        return self.listings[key]

    def tree(self, folder: Path) -> str | None:
        """sha256 of every `*.py` file under `folder`: its relative path and content."""
        if not folder.is_dir():
            return None
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*.py")):
            h.update(f"{path.relative_to(folder)}\0{self.file(path)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.changed:
            fileio.write_json(self.cache_path, self.cache)
            self.changed = False


def listing(folder: Path) -> str | None:
    """sha256 of the sorted names and sizes of the files in `folder` (not its sub-folders); None when it is
    not a folder."""
    try:
        entries = sorted((e.name, e.stat().st_size) for e in os.scandir(folder) if e.is_file())
    except OSError:
        return None
    h = hashlib.sha256()
    for name, size in entries:
        h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()
