"""steel_seg: train, tune and bundle one offline Kaggle kernel for Severstal steel defect segmentation.

The package's folders are its architecture (docs/ARCHITECTURE.md); each folder's docstring says what it owns
and what it may import. Imports only go down this picture:

    competition.py  fileio.py  progress.py   the competition's facts; atomic files; the progress helper;
    workers.py                               worker processes that die with their parent
    formats/                                 the files the competition and the kit exchange
    models/                                  models, their files and pretrained encoders
    postprocess/                             the rules from probabilities to masks, and their search
    engine/         train/    synthetic/     inference (ships in the kernel); training; a synthetic set
    workflow/       report/                  OOF predictions and pseudo-labels; EDA and evaluation pages
    bundle.py  kernel.py  cli/               the kernel builder, the kernel's entry, the `steel-seg` commands
"""

__version__ = "0.1.0"
