"""Where data, weights and outputs live, on Kaggle or locally: the ONLY module that reads the environment.

On Kaggle (`KAGGLE_KERNEL_RUN_TYPE` set, or `/kaggle/input` present) attached datasets sit under
`/kaggle/input/<slug>` and outputs go to `/kaggle/working`. Locally the input root is `$STEEL_SEG_INPUT`
(else `./data`) and outputs go to the current directory. Inputs are found by their marker files when they are
not where their slug says (Kaggle has mounted inputs at other depths before).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from steel_seg.competition import SAMPLE_SUBMISSION, SLUG, SUBMISSION, TEST_IMAGES

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
SEARCH_DEPTH = 3  # folder levels under the input root searched for a marker file


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

    def find_input(self, marker: str, slug: str | None = None) -> Path:
        """The folder holding `marker`: `slug`'s dataset when it does, else the one folder up to SEARCH_DEPTH
        levels under the input root that does.

        Raises:
            FileNotFoundError: none or several candidates; the message lists what was found.
        """
        preferred = self.dataset_dir(slug) if slug else None
        if preferred is not None and (preferred / marker).is_file():
            return preferred
        levels = range(1, SEARCH_DEPTH + 1)
        found = sorted({p.parent for depth in levels for p in self.input_root.glob("*/" * depth + marker)})
        if len(found) != 1:
            missing = f"{preferred / marker} not found; " if preferred is not None else ""
            names = [str(p) for p in found]
            raise FileNotFoundError(f"{missing}expected one folder holding {marker}, found {names} "
                                    f"under {self.input_root}")  # fmt: skip
        return found[0]

    def find_competition_dir(self, slug: str = SLUG) -> Path:
        """The competition's data folder (it holds the sample submission)."""
        return self.find_input(SAMPLE_SUBMISSION, slug)


def locate(environ: Mapping[str, str] | None = None, kaggle_input: Path = KAGGLE_INPUT) -> Locations:
    """The locations of this machine (`environ` defaults to `os.environ`)."""
    env = os.environ if environ is None else environ
    if "KAGGLE_KERNEL_RUN_TYPE" in env or kaggle_input.is_dir():
        return Locations(True, kaggle_input, KAGGLE_WORKING)
    return Locations(False, Path(env.get("STEEL_SEG_INPUT", "data")), Path.cwd())


def default_device() -> str:
    """ "cuda" when an accelerator is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
