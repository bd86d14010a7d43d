"""Out-of-fold prediction of a training run: its held-out fold, at full resolution, into an OOF directory.

Reads `run.json` (docs/CONTRACTS.md, "Training run directory"), predicts the fold's images with the
inference engine (`predict.iter_probs`: the same batching/TTA code as the kernel) and stores them with
`oof.OOFWriter`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from steel_seg import models
from steel_seg.ensemble import Ensemble, Member
from steel_seg.labels import Labels
from steel_seg.oof import OOFWriter
from steel_seg.predict import PredictSettings, iter_probs

RUN_KEYS = ("name", "fold", "folds_csv", "train_csv", "images_dir", "model_dir")


@dataclass(frozen=True)
class RunInfo:
    """The parts of `run.json` that OOF prediction needs (relative paths: from the current directory)."""

    run_dir: Path
    name: str
    fold: int
    folds_csv: Path
    train_csv: Path
    images_dir: Path
    model_dir: Path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        """Read `run_dir/run.json`; ValueError naming the file and the missing key or path."""
        run_dir = Path(run_dir)
        path = run_dir / "run.json"
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the run description: {exc}") from exc
        missing = [k for k in RUN_KEYS if k not in d]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        info = cls(
            run_dir,
            str(d["name"]),
            int(d["fold"]),
            Path(d["folds_csv"]),
            Path(d["train_csv"]),
            Path(d["images_dir"]),
            run_dir / d["model_dir"],
        )
        for key in ("folds_csv", "train_csv", "images_dir", "model_dir"):
            if not getattr(info, key).exists():
                raise ValueError(f"{path}: {key} {getattr(info, key)} does not exist")
        return info

    def heldout_ids(self) -> list[str]:
        """The fold's ImageIds, sorted; ValueError naming folds.csv when it has none."""
        folds = pd.read_csv(self.folds_csv)
        if not {"ImageId", "fold"} <= set(folds.columns):
            raise ValueError(f"{self.folds_csv}: columns ImageId,fold expected, got {list(folds.columns)}")
        ids = sorted(folds.loc[folds["fold"] == self.fold, "ImageId"])
        if not ids:
            raise ValueError(f"{self.folds_csv}: no image in fold {self.fold}")
        return ids


def predict_heldout(
    run_dir: str | Path, out_dir: str | Path | None = None, settings: PredictSettings | None = None
) -> Path:
    """Write the OOF directory of a run's held-out fold (default `oof/<run name>`); returns it."""
    settings = settings or PredictSettings()
    info = RunInfo.load(run_dir)
    model, spec = models.load(info.model_dir, device="cpu")
    if not spec.has_seg:
        raise ValueError(f"{info.model_dir}: a {spec.arch} has no segmentation output to store as OOF")
    ensemble = Ensemble([Member(info.name, "seg", model, spec)], settings.device)
    ids = info.heldout_ids()[: settings.limit]
    writer = OOFWriter(Path(out_dir or Path("oof") / info.name), str(info.run_dir), info.fold, spec.has_cls)
    for image_id, probs, cls in iter_probs(ensemble, [info.images_dir / i for i in ids], settings):
        writer.add(image_id, probs, cls)
    return writer.close(Labels.from_csv(info.train_csv, info.images_dir))
