"""GPU throughput of the real engine: Unet-efficientnet-b3 (random init), 256x1600, TTA none/h/v, fp16.

Writes N synthetic Severstal-like JPEGs (steel_seg.synthetic.dataset) and a final-layout sample, then runs
`predict_submission` (decode workers, stacked views, on-device threshold, post-processing pool, CSV) with
1 model and with a K-model ensemble (all random init), after a warm-up pass (cudnn autotuning). Projects the
time of Kaggle's 5,506 test images with K models from the measured K-model rate plus the load time.
Prints one JSON line last. Run via benchmarks/gpu_bench.sh (prints the machine first); on CPU for a check:
`python benchmarks/gpu_bench.py --device cpu --images 4 --warmup-images 2 --encoder tu-mobilenetv3_small_050
--amp off --models 2`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

NEEDED = (
    "torch",
    "numpy",
    "cv2",
    "pandas",
    "tqdm",
    "timm",
    "huggingface_hub",
    "safetensors",
    "segmentation_models_pytorch",
    "albumentations",
)
KAGGLE_TEST_IMAGES = 5506
KAGGLE_BUDGET_S = 3300


def check_imports() -> None:
    """Exit with one clear message naming every missing package (nothing can be installed there)."""
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 (any import failure is reported, not just ImportError)
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing:
        sys.exit(
            "gpu_bench: missing packages: " + "; ".join(missing) + ". The pure-python ones (smp, timm, "
            "huggingface_hub) can be carried from this repo's .venv site-packages; see gpu_bench.sh."
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--warmup-images", type=int, default=64)
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="efficientnet-b3")
    p.add_argument("--views", default="none,h,v")
    p.add_argument("--amp", default="fp16", choices=("fp16", "bf16", "off"))
    p.add_argument("--models", type=int, default=5, help="ensemble size of the projection run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--post-workers", type=int, default=4)
    return p.parse_args()


def make_weights(root: Path, args: argparse.Namespace, n_models: int):
    """`n_models` random-init models saved as model dirs, with their manifest; returns the loaded Ensemble."""
    import torch

    from steel_seg.engine.ensemble import Ensemble
    from steel_seg.models import factory
    from steel_seg.models.manifest import Manifest, write_manifest

    spec = factory.ModelSpec(arch=args.arch, encoder=args.encoder)
    for i in range(n_models):
        torch.manual_seed(i)
        factory.save(factory.build_model(spec), spec, root / f"m{i}")
    write_manifest(root, [f"m{i}" for i in range(n_models)], tta=tuple(args.views.split(",")))
    return Ensemble.load(root, Manifest.load(root / "manifest.json"), args.device)


def timed_run(ensemble, data: Path, out: Path, args: argparse.Namespace, limit: int | None) -> dict:
    from steel_seg.engine.predict import predict_submission
    from steel_seg.engine.runner import PredictSettings
    from steel_seg.postprocess.rules import Rules

    settings = PredictSettings(
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        budget_s=1e9,
        limit=limit,
        post_workers=args.post_workers,
        progress=False,
    )
    summary = predict_submission(
        ensemble, Rules(), data / "test_images", data / "sample_submission.csv", out, settings
    )
    shares = {k: round(v / summary.seconds, 3) for k, v in summary.stage_s.items()}
    return {
        "images": summary.images,
        "seconds": round(summary.seconds, 2),
        "images_per_s": round(summary.images_per_s, 2),
        "stage_share": shares,
    }


def main() -> None:
    args = parse_args()
    check_imports()
    import torch

    from steel_seg.synthetic.dataset import write_dataset

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_bench: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_dataset(tmp / "data", 0, args.images, progress=False)
        synth_s = time.perf_counter() - start
        result = {
            "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "arch": args.arch,
            "encoder": args.encoder,
            "views": args.views,
            "amp": args.amp,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "synthetic_s": round(synth_s, 1),
        }
        for n_models in (1, args.models):
            start = time.perf_counter()
            ensemble = make_weights(tmp / f"weights{n_models}", args, n_models)
            load_s = time.perf_counter() - start
            timed_run(ensemble, tmp / "data", tmp / "warmup.csv", args, args.warmup_images)
            run = timed_run(ensemble, tmp / "data", tmp / f"sub{n_models}.csv", args, None)
            result[f"models_{n_models}"] = {**run, "load_s": round(load_s, 1)}
            print(f"{n_models} model(s): {run}", flush=True)
            del ensemble
            if args.device.startswith("cuda"):
                gib = torch.cuda.max_memory_allocated() / 2**30
                result[f"models_{n_models}"]["max_memory_gib"] = round(gib, 2)
                torch.cuda.empty_cache()
        rate = result[f"models_{args.models}"]["images_per_s"]
        projected = KAGGLE_TEST_IMAGES / rate + result[f"models_{args.models}"]["load_s"]
        result.update(
            projected_images=KAGGLE_TEST_IMAGES,
            projected_models=args.models,
            projected_s=round(projected, 1),
            kaggle_budget_s=KAGGLE_BUDGET_S,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
