"""EDA and evaluation reports: PNG figures plus one self-contained `report.html` each.

`eda_page.build` (train set: classes, masks, positions, overlays, near-duplicate clusters) and
`eval_page.build` (OOF predictions under post-processing rules: Dice breakdowns, presence, ROC, curves, worst
images). Statistics live in `eda` and `evaluate`, drawing in `overlay` and `figures`, the page in `html`.

May import: competition, fileio, progress, formats, models, postprocess.
"""

from steel_seg.report.eda_page import EdaSettings
from steel_seg.report.eda_page import build as build_eda
from steel_seg.report.eval_page import EvalSettings
from steel_seg.report.eval_page import build as build_eval
from steel_seg.report.html import Written

__all__ = ["EdaSettings", "EvalSettings", "Written", "build_eda", "build_eval"]
