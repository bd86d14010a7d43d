"""Where data, weights and outputs live, on Kaggle or locally, and which run this is: the ONLY module that
reads the environment.

On Kaggle (`KAGGLE_KERNEL_RUN_TYPE` set, or `/kaggle/input` present) attached inputs sit under
`/kaggle/input` and outputs go to `/kaggle/working`. Locally the input root is `$STEEL_SEG_INPUT` (else
`./data`) and outputs go to the current directory. A code-competition submission is run again by Kaggle on
the hidden test set (`KAGGLE_IS_COMPETITION_RERUN` set, as public kernels test it): that re-run's file is the
one scored, not the push run's. Every `KAGGLE_*` variable is kept for the start-up log (secrets masked).

Inputs are found by their marker files: Kaggle mounts the competition at `/kaggle/input/competitions/<slug>`
and datasets at `/kaggle/input/datasets/<owner>/<slug>` (earlier at `/kaggle/input/<slug>`), datasets get
renamed, and zip uploads unpack into extra folders. Every folder up to SEARCH_DEPTH levels under the input
root is searched (image folders are not entered); among several candidates the one in the expected area
(`competitions/`), the one the caller prefers, then the one named like the slug wins, and every candidate not
taken is logged with the reason. When something cannot be found, the error lists what IS there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from steel_seg.competition import SAMPLE_SUBMISSION, SLUG, SUBMISSION, TEST_IMAGES, TRAIN_IMAGES

log = logging.getLogger(__name__)

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
RERUN_VARIABLE = "KAGGLE_IS_COMPETITION_RERUN"  # set (non-empty) on the scoring re-run of a submission
COMPETITIONS_AREA = "competitions"  # where Kaggle mounts competition data under the input root
SEARCH_DEPTH = 6  # folder levels under the input root searched for marker files
NOT_SEARCHED = (TRAIN_IMAGES, TEST_IMAGES)  # thousands of files and no marker: never entered
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")  # a KAGGLE_* name with one: not logged
LISTED_LEVELS = 2  # levels of the input root shown when an input cannot be found
LISTED_ENTRIES = 8  # entries shown per folder in that listing


@dataclass(frozen=True)
class Locations:
    """The roots of one machine: attached inputs (competition data, weight datasets) and the output folder."""

    on_kaggle: bool
    input_root: Path
    working_dir: Path
    rerun: bool = False  # Kaggle's scoring re-run of a code-competition submission
    kaggle_env: tuple[tuple[str, str], ...] = ()  # every KAGGLE_* variable, secrets masked

    @property
    def run(self) -> str:
        """Which run this is: "scoring re-run", "push run" (Kaggle, not scored) or "local run"."""
        if self.rerun:
            return "scoring re-run"
        return "push run" if self.on_kaggle else "local run"

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
        prefer: tuple[Callable[[Path], bool], str] | None = None,
        area: str | None = None,
    ) -> Path:
        """The folder holding `markers` (file or folder names) up to SEARCH_DEPTH levels under the input
        root. Among several: those under `input_root/area`, then those `prefer` accepts (a test and what it
        checks, for the log), then those named `slug`; each rule applies when it leaves one at least. The
        candidates not taken are logged, each with the rule it failed.

        Raises:
            FileNotFoundError: none, or several that no rule tells apart; the message lists them and what
                the input root holds.
        """
        names = (markers,) if isinstance(markers, str) else tuple(markers)
        found = self.holding(names)
        rules = []
        if area:
            rules.append(
                (lambda d: self.input_root / area in d.parents, f"not under {self.input_root / area}")
            )
        if prefer is not None:
            rules.append((prefer[0], f"not {prefer[1]}"))
        if slug:
            rules.append((lambda d: d.name == slug, f"not named {slug}"))
        ranked, dropped = found, {}
        for keep, why in rules:
            narrowed = [d for d in ranked if keep(d)]
            if narrowed:
                dropped.update({d: why for d in ranked if d not in narrowed})
                ranked = narrowed
        if len(ranked) != 1:
            named = [d for d in found if d.name == slug]
            missing = f"no folder named {slug} holds {' + '.join(names)}; " if slug and not named else ""
            raise FileNotFoundError(
                f"{missing}expected one folder holding {' + '.join(names)} up to {SEARCH_DEPTH} levels under "
                f"{self.input_root}, found {[str(d) for d in ranked]}. {listing(self.input_root)}"
            )
        for folder, why in dropped.items():
            log.warning(
                "%s also holds %s; not taken (%s): using %s", folder, " + ".join(names), why, ranked[0]
            )
        return ranked[0]

    def find_competition_dir(self, slug: str = SLUG) -> Path:
        """The competition's data folder: it holds the sample submission and the test images (Kaggle's
        `competitions/` area first, then the folder named `slug`)."""
        return self.find_input((SAMPLE_SUBMISSION, TEST_IMAGES), slug, area=COMPETITIONS_AREA)


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
        if sub.name not in NOT_SEARCHED:
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
    """The locations of this machine and which run this is (`environ` defaults to `os.environ`)."""
    env = os.environ if environ is None else environ
    rerun = bool(env.get(RERUN_VARIABLE, ""))
    kaggle_env = tuple(sorted((k, _shown_value(k, v)) for k, v in env.items() if k.startswith("KAGGLE_")))
    if "KAGGLE_KERNEL_RUN_TYPE" in env or kaggle_input.is_dir():
        return Locations(True, kaggle_input, KAGGLE_WORKING, rerun, kaggle_env)
    return Locations(False, Path(env.get("STEEL_SEG_INPUT", "data")), Path.cwd(), rerun, kaggle_env)


def _shown_value(name: str, value: str) -> str:
    """A variable's value for the log; a secret's only its length."""
    if any(word in name.upper() for word in SECRET_WORDS):
        return f"<set, {len(value)} characters, not shown>"
    return value


def default_device() -> str:
    """ "cuda" when an accelerator is visible, else "cpu"."""
    import torch  # here: the kernel reads its locations before torch is known to import

    return "cuda" if torch.cuda.is_available() else "cpu"
