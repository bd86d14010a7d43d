"""The loss curve of a short seeded CPU run, to compare two source trees (e.g. before and after a change to
the data path): same config, same seed, same synthetic images, whichever `steel_seg` is on PYTHONPATH.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_loss_curve.py --out /tmp/curve_new
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/bench_loss_curve.py --out /tmp/curve_old

`configs/demo_cpu.yaml` on 40 synthetic images (`write_dataset(seed=3)`, written once into `--data`), 3
epochs of 3 batches of 4 crops, affine 0.3, defect blackout 0.2, EMA 0.9, one torch thread; `--set KEY=VALUE`
(YAML values) changes the config, e.g. `--set loss.dice_weight=0`. Prints one JSON line: per epoch (train
loss, validation loss, validation Dice) and a sha256 prefix of the last model's weights (equal weights,
equal prefix).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from steel_seg.synthetic.dataset import write_dataset  # noqa: E402
from steel_seg.train.config import TrainConfig  # noqa: E402
from steel_seg.train.loop import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run dir (replaced)")
    p.add_argument("--data", type=Path, default=Path("/tmp/steel_seg_curve_data"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if not (args.data / "train.csv").is_file():
        write_dataset(args.data, 40, 0, progress=False, seed=3)
    torch.set_num_threads(1)
    data = {
        "data.train_csv": str(args.data / "train.csv"),
        "data.images_dir": str(args.data / "train_images"),
    }
    overrides = {**data, "data.folds": "random 5", "data.batch_size": 4, "data.batches_per_epoch": 3,
                 "data.workers": args.workers, "data.augment.affine": 0.3, "data.augment.mask_dropout": 0.2,
                 "schedule.epochs": 3, "train.progress": False, "train.ema_decay": 0.9}  # fmt: skip
    overrides |= {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    result = train(
        TrainConfig.from_yaml(ROOT / "configs" / "demo_cpu.yaml", overrides), args.out, overwrite=True
    )
    state = load_file(str(args.out / "last" / "model.safetensors"))
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]
    curve = [(r["train_loss"], r["val_loss"], r["val_dice"]) for r in result.records]
    print(json.dumps({"workers": args.workers, "set": args.set, "curve": curve, "weights_sha256": digest}))


if __name__ == "__main__":
    main()
