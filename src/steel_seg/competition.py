"""The competition: every fact of Kaggle's Severstal data that the package depends on, and nothing else.

Image shape, class ids, the competition's slug and file names, and the CSV layouts its files come in. Every
other module imports these names; none writes the numbers again. Formats the kit invents (manifest, rules,
model dirs, runs, OOF dirs) belong to the modules that own them.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

SLUG = "severstal-steel-defect-detection"
IMAGE_SHAPE = (256, 1600)  # (H, W) of every image; masks and RLE pixel numbers use it too
HEIGHT, WIDTH = IMAGE_SHAPE
CLASSES = (1, 2, 3, 4)  # ClassId k sits at array index k - 1 everywhere
N_CLASSES = len(CLASSES)

# The competition's files, as Kaggle names them.
TRAIN_CSV = "train.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
SAMPLE_SUBMISSION = "sample_submission.csv"
SUBMISSION = "submission.csv"
IMAGE_SUFFIX = ".jpg"

# The final sample submission's row for an image: ClassId 0 ("no class") over the whole image.
NO_DEFECT_CLASS = 0
FULL_IMAGE_RLE = f"1 {HEIGHT * WIDTH}"
# The two readings of the FINAL layout a submission can be written in (`formats.submission` spells them out):
# no source confirms which one the re-release scorer accepts.
FINAL_FORMATS = ("sample-like", "pairs")
DEFAULT_FINAL_FORMAT = "sample-like"

# The columns of the competition's CSVs; each `Layout` is a sequence of them.
IMAGE_ID, CLASS_ID, ENCODED_PIXELS = "ImageId", "ClassId", "EncodedPixels"
IMAGE_CLASS_ID = f"{IMAGE_ID}_{CLASS_ID}"  # the original layout's key: `<ImageId>_<ClassId>`


class Layout(Enum):
    """A CSV layout of the competition's label and submission files, valued by a short name.

    - ORIGINAL `ImageId_ClassId,EncodedPixels`: the 2019 train.csv and the stage-1 sample submission, 4 rows
      an image (`<ImageId>_<ClassId>`), empty cell = no defect;
    - RERELEASE `ImageId,ClassId,EncodedPixels`: the re-released train.csv, defect rows only;
    - FINAL `ImageId,EncodedPixels,ClassId`: the final-stage sample submission.
    """

    ORIGINAL = "original"
    RERELEASE = "rerelease"
    FINAL = "final"

    @property
    def columns(self) -> tuple[str, ...]:
        return _COLUMNS[self]

    @property
    def header(self) -> str:
        """The exact header line (without the newline)."""
        return ",".join(self.columns)

    @classmethod
    def of_columns(cls, columns: Sequence[str]) -> Layout | None:
        """The layout whose header is exactly `columns`, or None."""
        return next((layout for layout in cls if layout.columns == tuple(columns)), None)


_COLUMNS = {
    Layout.ORIGINAL: (IMAGE_CLASS_ID, ENCODED_PIXELS),
    Layout.RERELEASE: (IMAGE_ID, CLASS_ID, ENCODED_PIXELS),
    Layout.FINAL: (IMAGE_ID, ENCODED_PIXELS, CLASS_ID),
}
TRAIN_LAYOUTS = (Layout.ORIGINAL, Layout.RERELEASE)  # what a train.csv can be
SAMPLE_LAYOUTS = (Layout.ORIGINAL, Layout.FINAL)  # what a sample submission can be (stage 1, final)
TIDY_COLUMNS = Layout.RERELEASE.columns  # the tidy table every reader returns: one row per defect mask
