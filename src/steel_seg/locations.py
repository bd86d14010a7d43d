"""Where data, weights and outputs live, on Kaggle or locally: the ONLY module that reads the environment.

On Kaggle (`KAGGLE_KERNEL_RUN_TYPE` set, or `/kaggle/input` present) attached datasets sit under
`/kaggle/input/<slug>` and outputs go to `/kaggle/working`. Locally the input root is `$STEEL_SEG_INPUT`
(else `./data`) and outputs go to the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

COMPETITION = "severstal-steel-defect-detection"
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Locations:
    """The roots of one machine: attached inputs (competition data, weight datasets) and the output folder."""

    on_kaggle: bool
    input_root: Path
    working_dir: Path

    @property
    def competition_dir(self) -> Path:
        return self.input_root / COMPETITION

    @property
    def test_images(self) -> Path:
        return self.competition_dir / "test_images"

    @property
    def sample_submission(self) -> Path:
        return self.competition_dir / "sample_submission.csv"

    @property
    def submission_csv(self) -> Path:
        return self.working_dir / "submission.csv"

    def dataset_dir(self, slug: str) -> Path:
        """An attached dataset's folder: `input_root/slug`."""
        return self.input_root / slug

    def find_weights_dir(self, slug: str | None = None) -> Path:
        """The weights folder: `slug`'s dataset, else the one folder under `input_root` holding manifest.json.

        Raises:
            FileNotFoundError: no (or more than one) candidate; the message lists what was found.
        """
        if slug is not None:
            path = self.dataset_dir(slug)
            if not (path / MANIFEST_FILE).is_file():
                raise FileNotFoundError(f"{path / MANIFEST_FILE}: not found (weights dataset {slug!r})")
            return path
        found = sorted(p.parent for p in self.input_root.glob(f"*/{MANIFEST_FILE}"))
        found += sorted(p.parent for p in self.input_root.glob(f"*/*/{MANIFEST_FILE}"))
        if len(found) != 1:
            names = [str(p) for p in found]
            raise FileNotFoundError(
                f"{self.input_root}: expected one folder holding {MANIFEST_FILE}, found {names}"
            )
        return found[0]


def locate(environ: Mapping[str, str] | None = None, kaggle_input: Path = KAGGLE_INPUT) -> Locations:
    """The locations of this machine (`environ` defaults to `os.environ`)."""
    env = os.environ if environ is None else environ
    if "KAGGLE_KERNEL_RUN_TYPE" in env or kaggle_input.is_dir():
        return Locations(True, kaggle_input, KAGGLE_WORKING)
    return Locations(False, Path(env.get("STEEL_SEG_INPUT", "data")), Path.cwd())


def default_device() -> str:
    """ "cuda" when an accelerator is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
