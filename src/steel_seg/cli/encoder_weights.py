"""`steel-seg encoder-weights`: export a pretrained encoder (smp's hub/cache) to a file for offline machines.

Writes the encoder state dict smp loads (3 input channels) to `--out` (.safetensors) and its preprocessing
(mean, std, input space and range, hub repository and revision) to the same name with `.json`. Run it where
the hub is reachable (or the weights are cached), carry both files to the offline machine or attach them to a
Kaggle notebook as a dataset, and set `model.encoder_weights_path` to the .safetensors file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steel_seg.models.encoders import export


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encoder-weights", help="export a pretrained encoder for offline use", description=__doc__
    )
    p.add_argument("--encoder", required=True, help="smp encoder name, e.g. efficientnet-b3, resnet34")
    p.add_argument("--weights", default="imagenet", help="pretrained weights smp knows (default imagenet)")
    p.add_argument("--out", type=Path, required=True, help="output FILE.safetensors (FILE.json beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    weights_file, json_file = export(args.encoder, args.weights, args.out)
    print(f"wrote {weights_file} and {json_file}")
    print(f"use it with:  model.encoder_weights_path: {weights_file}   model.encoder_weights: null")
    return 0
