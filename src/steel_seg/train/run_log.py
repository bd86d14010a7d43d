"""A training run's per-epoch log: `log.jsonl` (one JSON object per epoch), `metrics.csv`, TensorBoard `tb/`.

On resume, records of epochs after the checkpoint are dropped first, so a resumed run's logs read as if it
had never stopped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from steel_seg.competition import CLASSES
from steel_seg.formats.runs import RunDir

CSV_FIELDS = (
    "epoch", "step", "lr", "train_loss", "val_loss", "val_dice", *(f"dice_{c}" for c in CLASSES),
    "dice_empty", "dice_nonempty", "val_dice_tuned", "cls_accuracy", "seconds", "is_best",
)  # fmt: skip


class RunLog:
    """Appends epoch records to the three logs of a run dir; `keep_epochs` truncates to epochs <= it."""

    def __init__(self, run: RunDir, keep_epochs: int = 0):
        self.jsonl = run.log
        self.csv = run.metrics
        old = read_log(self.jsonl) if self.jsonl.exists() else []
        records = [r for r in old if r["epoch"] <= keep_epochs]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run.tensorboard), purge_step=keep_epochs + 1)

    def write(self, record: dict[str, Any]) -> None:
        """One epoch: flat numbers (and an optional nested `score`) -> all three logs."""
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow(record)
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self.tb.add_scalar(key, value, record["epoch"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `log.jsonl`; ValueError naming the file and line when one is not JSON."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n}: not JSON ({exc})") from None
    return records
