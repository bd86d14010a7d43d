"""Kernel pipeline on CPU: the engine as the kernel runs it, against JPEG decode and a textbook kernel loop.

1. Pipeline without a model: `predict_submission` with a fixed cheap function in place of the network (3 TTA
   views, real post-processing, RLE, CSV) vs pure JPEG decode (`cv2.imdecode`, grey, one process) of the
   same files in the same run. Target: >= 70% of decode speed.
2. The kernel with a small real smp model vs a textbook kernel loop written below (one DataLoader per TTA
   view, 3-channel float32 input, float32 numpy post-processing with a loop per component, pandas at the
   end), same model, same images, same run. Target: >= 2x. The two outputs are scored against each other.

Images: the real sample's JPEGs (../shared/data/severstal_sample) cycled to N files, else synthetic ones.
Run: `.venv/bin/python benchmarks/bench_kernel.py [--images 96] [--model-images 16]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from steel_seg.engine.ensemble import Ensemble, Member
from steel_seg.engine.predict import predict_submission
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import metric, submission
from steel_seg.models import factory
from steel_seg.models.manifest import Manifest, write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_sample" / "train_images"
VIEWS = ("none", "h", "v")
RULES = Rules(
    tuple(ClassRule(c, 0.5, 150, a) for c, a in zip((1, 2, 3, 4), (600, 600, 900, 2000), strict=True))
)
SMALL = factory.ModelSpec(
    arch="Unet", encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(32, 16, 8)
)


class CheapNet(nn.Module):
    """A fixed stand-in for the network: class k's logit is `6 * (x - t_k)`, so bright pixels light up."""

    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.tensor([1.2, 1.4, 1.0, 1.6]).view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 6.0 * (x[:, :1] - self.t)


def make_images(folder: Path, n: int) -> tuple[list[Path], Path]:
    """n JPEGs (the real sample cycled, or synthetic) and a final-layout sample_submission listing them."""
    folder.mkdir(parents=True)
    sources = sorted(SAMPLE.glob("*.jpg"))
    if sources:
        paths = [folder / f"{i:05d}{sources[i % len(sources)].stem[:4]}.jpg" for i in range(n)]
        for i, path in enumerate(paths):
            shutil.copy(sources[i % len(sources)], path)
    else:
        from steel_seg.synthetic.dataset import write_dataset

        write_dataset(folder.parent / "synth", 0, n, progress=False)
        paths = sorted((folder.parent / "synth" / "test_images").glob("*.jpg"))
        folder = paths[0].parent
    sample = folder.parent / "sample_submission.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{p.name},1 409600,0\n" for p in paths))
    return paths, sample


def decode_rate(paths: list[Path]) -> float:
    """Images/s of pure grey JPEG decode in this process."""
    start = time.perf_counter()
    for path in paths:
        cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    return len(paths) / (time.perf_counter() - start)


def engine_rate(
    ensemble: Ensemble,
    paths: list[Path],
    sample: Path,
    out: Path,
    workers: int,
    batch_size: int,
    views: tuple[str, ...] | None = None,
) -> tuple[float, dict]:
    settings = PredictSettings(
        device="cpu", batch_size=batch_size, workers=workers, budget_s=1e9, progress=False, tta=views
    )
    summary = predict_submission(ensemble, RULES, paths[0].parent, sample, out, settings)
    return summary.images / summary.seconds, summary.to_dict()


# ------------------------------------------------------------------------------------ the textbook kernel
class TextbookDataset(Dataset):
    """cv2.imread (3 channels), float32 normalisation, the TTA flip done here: one pass per view."""

    def __init__(self, paths: list[Path], view: str, mean: float, std: float):
        self.paths, self.view, self.mean, self.std = paths, view, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = cv2.imread(str(self.paths[i])).astype(np.float32) / 255.0
        img = (img - self.mean) / self.std
        if self.view == "h":
            img = img[:, ::-1]
        elif self.view == "v":
            img = img[::-1]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def textbook_post_process(probability: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """The common public-kernel `post_process`: threshold, then one `component == c` pass per component."""
    mask = (probability > threshold).astype(np.uint8)
    num_component, component = cv2.connectedComponents(mask, connectivity=8)
    predictions = np.zeros(probability.shape, np.float32)
    for c in range(1, num_component):
        p = component == c
        if p.sum() >= min_size:
            predictions[p] = 1
    return predictions


def textbook_mask2rle(img: np.ndarray) -> str:
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def textbook_kernel(
    model: nn.Module, spec: factory.ModelSpec, paths: list[Path], out: Path, workers: int, batch_size: int
) -> dict[str, float]:
    """Timings of the textbook loop: all views' probabilities kept for the whole set, then post-processed."""
    start = time.perf_counter()
    probs = np.zeros((len(paths), 4, 256, 1600), np.float32)
    with torch.no_grad():
        for view in VIEWS:
            loader = DataLoader(
                TextbookDataset(paths, view, spec.mean, spec.std), batch_size=batch_size, num_workers=workers
            )
            i = 0
            for x in loader:
                p = torch.sigmoid(model(x)).numpy()
                p = p[..., ::-1] if view == "h" else (p[..., ::-1, :] if view == "v" else p)
                probs[i : i + len(p)] += p / len(VIEWS)
                i += len(p)
    predicted = time.perf_counter()
    rows, components = [], 0
    for path, image_probs in zip(paths, probs, strict=True):
        for k, rule in enumerate(RULES.classes):
            components += cv2.connectedComponents((image_probs[k] > rule.pixel_threshold).astype(np.uint8))[0]
            pred = textbook_post_process(image_probs[k], rule.pixel_threshold, rule.min_component)
            if pred.sum() < rule.min_area:
                pred[:] = 0
            rows.append({"ImageId": path.name, "EncodedPixels": textbook_mask2rle(pred), "ClassId": k + 1})
    pd.DataFrame(rows).to_csv(out, index=False)
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "predict_s": predicted - start,
        "post_s": end - predicted,
        "components_per_image": components / len(paths),
    }


def small_model_ensemble(weights: Path) -> tuple[Ensemble, nn.Module]:
    torch.manual_seed(0)
    model = factory.build_model(SMALL).eval()
    factory.save(model, SMALL, weights / "small")
    write_manifest(weights, ["small"], tta=VIEWS)
    return Ensemble.load(weights, Manifest.load(weights / "manifest.json"), "cpu"), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images for the model-free pipeline")
    parser.add_argument("--model-images", type=int, default=16, help="images for the small-model comparison")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (textbook, model-free)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the model comparison")
    parser.add_argument(
        "--engine-batch",
        type=int,
        default=3,
        help="engine images per batch with the small model (x3 views = one forward batch)",
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), args)
    print(json.dumps(results))


def run(tmp: Path, args: argparse.Namespace) -> dict:
    paths, sample = make_images(tmp / "a" / "test_images", args.images)
    cheap = Ensemble([Member("cheap", "seg", CheapNet(), SMALL, 1.0, VIEWS)], "cpu")
    decode_rate(paths[:8])
    decode = decode_rate(paths)
    results: dict = {"decode_images_per_s": decode}
    for views in (("none",), VIEWS):
        out = tmp / f"cheap{len(views)}.csv"
        rate, summary = engine_rate(cheap, paths, sample, out, args.workers, args.batch_size, views)
        results[f"pipeline_{len(views)}view_images_per_s"] = rate
        results[f"pipeline_{len(views)}view_stage_s"] = summary["stage_s"]
        print(
            f"model-free pipeline, {len(paths)} images, views {'/'.join(views)}, workers {args.workers}: "
            f"{rate:.1f} images/s = {rate / decode:.0%} of pure decode ({decode:.1f} images/s, same run); "
            f"stages {_shares(summary)}"
        )

    paths, sample = make_images(tmp / "b" / "test_images", args.model_images)
    ensemble, model = small_model_ensemble(tmp / "weights")
    engine_s, textbook = float("inf"), {"seconds": float("inf")}
    for _ in range(args.repeats):  # interleaved, best of each: the box's load drifts within a run
        rate, run_summary = engine_rate(
            ensemble, paths, sample, tmp / "engine.csv", args.workers, args.engine_batch
        )
        if len(paths) / rate < engine_s:
            engine_s, summary = len(paths) / rate, run_summary
        textbook = min(
            textbook,
            textbook_kernel(model, SMALL, paths, tmp / "textbook.csv", args.workers, args.batch_size),
            key=lambda t: t["seconds"],
        )
    agreement = metric.score(
        submission.read_predictions(tmp / "textbook.csv"),
        submission.read_predictions(tmp / "engine.csv"),
        [p.name for p in paths],
    )
    non_empty = len(submission.read_predictions(tmp / "engine.csv"))
    results.update(
        engine_s=engine_s,
        engine_stage_s=summary["stage_s"],
        textbook=textbook,
        speedup=textbook["seconds"] / engine_s,
        outputs_mean_dice=agreement.mean_dice,
        non_empty_masks=non_empty,
    )
    print(
        f"small model ({SMALL.encoder} Unet, random init), {len(paths)} images x 3 views: engine "
        f"{engine_s:.1f}s (stages {_shares(summary)}), textbook {textbook['seconds']:.1f}s (model "
        f"{textbook['predict_s']:.1f}s, post {textbook['post_s']:.1f}s, "
        f"{textbook['components_per_image']:.0f} components/image) -> "
        f"{textbook['seconds'] / engine_s:.2f}x; "
        f"outputs agree: mean Dice {agreement.mean_dice:.4f} ({non_empty} non-empty masks)"
    )
    return results


def _shares(summary: dict) -> str:
    total = sum(summary["stage_s"].values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in summary["stage_s"].items())


if __name__ == "__main__":
    main()
