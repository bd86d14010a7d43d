"""Where data, weights and outputs live, on Kaggle or locally: the ONLY module that reads the environment.

On Kaggle (`KAGGLE_KERNEL_RUN_TYPE` set, or `/kaggle/input` present) attached datasets sit under
`/kaggle/input/<slug>` and outputs go to `/kaggle/working`. Locally the input root is `$STEEL_SEG_INPUT`
(else `./data`) and outputs go to the current directory. Inputs are found by their marker files when they are
not where their slug says: Kaggle has mounted inputs at other depths before (`/kaggle/input/datasets/<user>/
<slug>`), datasets get renamed, and zip uploads unpack into extra folders. Every folder up to SEARCH_DEPTH
levels under the input root is searched; when something cannot be found, the error lists what IS there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from steel_seg.competition import SAMPLE_SUBMISSION, SLUG, SUBMISSION, TEST_IMAGES

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
SEARCH_DEPTH = 4  # folder levels under the input root searched for marker files
LISTED_LEVELS = 2  # levels of the input root shown when an input cannot be found
LISTED_ENTRIES = 8  # entries shown per folder in that listing


@dataclass(frozen=True)
class Locations:
    """The roots of one machine: attached inputs (competition data, weight datasets) and the output folder."""

    on_kaggle: bool
    input_root: Path
    working_dir: Path

    @property
    def competition_dir(self) -> Path:
        return self.input_root / SLUG

    @property
    def test_images(self) -> Path:
        return self.competition_dir / TEST_IMAGES

    @property
    def sample_submission(self) -> Path:
        return self.competition_dir / SAMPLE_SUBMISSION

    @property
    def submission_csv(self) -> Path:
        return self.working_dir / SUBMISSION

    def dataset_dir(self, slug: str) -> Path:
        """An attached dataset's folder: `input_root/slug`."""
        return self.input_root / slug

    def holding(self, markers: str | Sequence[str]) -> list[Path]:
        """Every folder up to SEARCH_DEPTH levels under the input root that holds all `markers`, sorted."""
        names = (markers,) if isinstance(markers, str) else tuple(markers)
        return [d for d in folders(self.input_root) if all((d / m).exists() for m in names)]

    def find_input(
        self,
        markers: str | Sequence[str],
        slug: str | None = None,
        prefer: Callable[[Path], bool] | None = None,
    ) -> Path:
        """The folder holding `markers` (file or folder names): `slug`'s dataset when it does, else the one
        folder under the input root that does, else the one of those named `slug`, else the one that `prefer`
        accepts.

        Raises:
            FileNotFoundError: none or several candidates; the message lists them and the input root.
        """
        names = (markers,) if isinstance(markers, str) else tuple(markers)
        preferred = self.dataset_dir(slug) if slug else None
        if preferred is not None and all((preferred / m).exists() for m in names):
            return preferred
        found = self.holding(names)
        if len(found) > 1 and slug:  # e.g. /kaggle/input/datasets/<user>/<slug>
            found = [d for d in found if d.name == slug] or found
        if len(found) > 1 and prefer is not None:
            found = [d for d in found if prefer(d)] or found
        if len(found) == 1:
            return found[0]
        missing = f"{preferred} does not hold {' + '.join(names)}; " if preferred is not None else ""
        raise FileNotFoundError(
            f"{missing}expected one folder holding {' + '.join(names)} up to {SEARCH_DEPTH} levels under "
            f"{self.input_root}, found {[str(d) for d in found]}. {listing(self.input_root)}"
        )

    def find_competition_dir(self, slug: str = SLUG) -> Path:
        """The competition's data folder: it holds the sample submission and the test images."""
        return self.find_input((SAMPLE_SUBMISSION, TEST_IMAGES), slug)


def files_named(root: Path, name: str, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every file called `name` in `root` and the folders up to `depth` levels below it, sorted."""
    return [d / name for d in folders(root, depth) if (d / name).is_file()]


def folders(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """`root` and every folder up to `depth` levels below it (symlinks followed, unreadable ones skipped)."""
    return sorted(_walk(root, depth))


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if not folder.is_dir():
        return
    yield folder
    if depth == 0:
        return
    for sub in _subfolders(folder):
        yield from _walk(sub, depth - 1)


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if _is_dir(e)]
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def listing(root: Path, levels: int = LISTED_LEVELS) -> str:
    """What `root` holds, `levels` deep, at most LISTED_ENTRIES names per folder: for error messages."""
    if not root.is_dir():
        return f"{root} does not exist."
    lines = [f"{root} holds:"] + _listing_lines(root, levels, "  ")
    return "\n".join(lines if len(lines) > 1 else [f"{root} is empty."])


def _listing_lines(folder: Path, levels: int, indent: str) -> list[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        return [f"{indent}(unreadable: {exc.strerror})"]
    lines = []
    for entry in entries[:LISTED_ENTRIES]:
        is_dir = _is_dir(entry)
        lines.append(f"{indent}{entry.name}{'/' if is_dir else ''}")
        if is_dir and levels > 1:
            lines += _listing_lines(Path(entry.path), levels - 1, indent + "  ")
    if len(entries) > LISTED_ENTRIES:
        lines.append(f"{indent}... and {len(entries) - LISTED_ENTRIES} more")
    return lines


def locate(environ: Mapping[str, str] | None = None, kaggle_input: Path = KAGGLE_INPUT) -> Locations:
    """The locations of this machine (`environ` defaults to `os.environ`)."""
    env = os.environ if environ is None else environ
    if "KAGGLE_KERNEL_RUN_TYPE" in env or kaggle_input.is_dir():
        return Locations(True, kaggle_input, KAGGLE_WORKING)
    return Locations(False, Path(env.get("STEEL_SEG_INPUT", "data")), Path.cwd())


def default_device() -> str:
    """ "cuda" when an accelerator is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
