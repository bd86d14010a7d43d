"""Inference engine throughput vs the textbook per-image loop, in the same run.

The test set is `--n` copies of the JPEGs in `--images` (the real sample), predicted at 256x1600 by a
random-weight smp model (speed does not depend on the weights) with TTA views `--tta`. Variants: the engine
with bf16/fp16 autocast or fp32, thread or process post-processing pool, and the textbook loop (one image at a
time, one forward per view, fp32, probabilities to the CPU, numpy threshold + post-processing, pandas CSV at
the end). Also checks on the device that `iter_probs` + CPU post-processing gives the same rows as
`predict_submission` (one implementation). Prints a table; `--json` writes the numbers.

    python benchmarks/bench_predict.py --images .bench/images --device cuda --n 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from steel_seg.engine.ensemble import Ensemble, flip
from steel_seg.engine.predict import iter_probs, predict_submission
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import rle, submission
from steel_seg.models import factory
from steel_seg.models.manifest import Manifest, write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules, apply


def make_test_set(src: Path, n: int, root: Path) -> tuple[Path, Path, list[str]]:
    """`n` copies of the source JPEGs (unique names) and a final-layout sample submission."""
    images = root / "test_images"
    images.mkdir(parents=True)
    sources = sorted(src.glob("*.jpg"))
    ids = [f"{i:05d}{sources[i % len(sources)].stem[:4]}.jpg" for i in range(n)]
    for i, image_id in enumerate(ids):
        shutil.copy(sources[i % len(sources)], images / image_id)
    sample = root / "sample_submission.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in ids))
    return images, sample, ids


def make_weights(root: Path, spec: factory.ModelSpec, tta: tuple[str, ...]) -> Path:
    torch.manual_seed(0)
    factory.save(factory.build_model(spec), spec, root / "seg")
    write_manifest(root, ["seg"], tta=tta)
    return root


def textbook(model, spec, rules, images: Path, ids: list[str], views, device, out: Path) -> float:
    """The usual kernel loop: per image, per view, fp32; post-processing and RLE inline; CSV at the end."""
    start = time.perf_counter()
    rows = []
    with torch.no_grad():
        for image_id in ids:
            bgr = cv2.imread(str(images / image_id))
            x = (bgr[:, :, 0].astype(np.float32) / 255.0 - spec.mean) / spec.std
            x = torch.from_numpy(x)[None, None].repeat(1, spec.in_channels, 1, 1).to(device)
            probs = [flip(torch.sigmoid(model(flip(x, v))), v).cpu().numpy() for v in views]
            masks = apply(np.mean(probs, axis=0)[0], rules)
            for k, encoded in enumerate(rle.encode_many(masks)):
                rows.append((image_id, encoded, k + 1))
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "ClassId"]).to_csv(out, index=False)
    return time.perf_counter() - start


def engine(ensemble, rules, images, sample, out, **settings) -> dict:
    summary = predict_submission(
        ensemble, rules, images, sample, out, PredictSettings(progress=False, **settings)
    )
    stages = {k: round(v / summary.seconds, 3) for k, v in summary.stage_s.items()}
    return {"seconds": summary.seconds, "images_per_s": summary.images_per_s, "stage_share": stages}


def consistency(ensemble, rules, images, sample_ids, root, settings) -> dict:
    """Rows of predict_submission vs iter_probs + apply on the same device and batches."""
    sample = root / "consistency.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 409600,0\n" for i in sample_ids))
    predict_submission(ensemble, rules, images, sample, root / "c.csv", PredictSettings(**settings))
    table = submission.read_predictions(root / "c.csv")
    got = {(i, c): e for i, c, e in table[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False)}
    same = total = nonempty = 0
    for image_id, probs, cls in iter_probs(
        ensemble, [images / i for i in sample_ids], PredictSettings(**settings)
    ):
        for k, encoded in enumerate(rle.encode_many(apply(probs, rules, cls))):
            total += 1
            nonempty += bool(encoded)
            same += got.get((image_id, k + 1), "") == encoded
    return {"pairs": total, "identical": same, "nonempty": nonempty}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--textbook-n", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--tta", default="none,h,v")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--post-workers", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    views = tuple(args.tta.split(","))
    spec = factory.ModelSpec(arch=args.arch, encoder=args.encoder)
    rules = Rules(tuple(ClassRule(k + 1, 0.5, min_component=150, min_area=600) for k in range(4)))
    root = Path(tempfile.mkdtemp())
    images, sample, ids = make_test_set(args.images, args.n, root)
    weights = make_weights(root / "weights", spec, views)
    ensemble = Ensemble.load(weights, Manifest.load(weights / "manifest.json"), args.device)
    base = {
        "device": args.device,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "post_workers": args.post_workers,
        "budget_s": float("inf"),
    }
    results: dict = {
        "n": args.n,
        "spec": spec.to_dict(),
        "tta": views,
        "settings": base,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
    }
    engine(ensemble, rules, images, sample, root / "warm.csv", **{**base, "limit": 4 * args.batch_size})
    variants = {
        "engine amp=auto": {},
        "engine amp=fp16": {"amp": "fp16"},
        "engine amp=off (fp32)": {"amp": "off"},
        "engine amp=auto, process pool": {"post_pool": "process"},
        "engine amp=auto, batch 16": {"batch_size": 16},
    }
    for name, extra in variants.items():
        results[name] = engine(ensemble, rules, images, sample, root / "out.csv", **{**base, **extra})
        print(name, json.dumps(results[name]), flush=True)
    member = ensemble.members["seg"]
    seconds = textbook(
        member.model, spec, rules, images, ids[: args.textbook_n], views, args.device, root / "textbook.csv"
    )
    results["textbook"] = {
        "seconds": seconds,
        "images_per_s": args.textbook_n / seconds,
        "n": args.textbook_n,
    }
    print("textbook", json.dumps(results["textbook"]), flush=True)
    results["consistency"] = consistency(ensemble, rules, images, ids[:32], root, {**base, "amp": "off"})
    print("consistency", json.dumps(results["consistency"]), flush=True)
    for name in variants:
        results[name]["vs_textbook"] = results[name]["images_per_s"] / results["textbook"]["images_per_s"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(root)
    what = f"{results['gpu']}, {args.encoder} {args.arch}, TTA {'+'.join(views)}"
    print(f"\n| variant ({what}) | images/s | x textbook |")
    for name in [*variants, "textbook"]:
        ratio = results[name].get("vs_textbook", 1.0)
        print(f"| {name} | {results[name]['images_per_s']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
