"""The Kaggle kernel's entry: `main(argv, manifest, rules)`, called by the bundled script (see `bundle`).

Start-up checks come first and fail fast (exit 2, no submission written, no image read): the imports and
where each came from, the input paths, the manifest, the rules, and every model's sha256 and spec. Then the
engine (`predict.predict_submission`, the same code as `steel-seg predict`) streams the submission.
A failure after the checks still leaves a complete submission: the rows already predicted are kept, the
rest are written empty and the traceback is logged. The exit code is then 0 (a kernel that exits non-zero
on Kaggle gives no submission at all, a degraded one still scores) unless `--strict` (local dry runs, tests),
which makes it 3. At the end the submission is validated against the sample
it was given (exit 4 when invalid); the engine logs the timing summary (images/s, share per stage).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steel_seg import locations

if TYPE_CHECKING:
    from steel_seg.postprocess import Rules
    from steel_seg.predict import Ensemble, PredictSettings

log = logging.getLogger("steel_seg.kernel")

OK, STARTUP_FAILED, RUN_FAILED, INVALID = 0, 2, 3, 4
SAMPLE_FILE = "sample_submission.csv"
MANIFEST_FILE = "manifest.json"
LOGGED_PACKAGES = (
    "torch",
    "segmentation_models_pytorch",
    "timm",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "pandas",
    "cv2",
    "steel_seg",
)


@dataclass(frozen=True)
class Paths:
    """Inputs and output of one run."""

    images_dir: Path
    sample_csv: Path
    weights_dir: Path
    out_csv: Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kernel.py", description="Predict the Severstal test set offline.")
    where = p.add_argument_group("where (defaults: the Kaggle paths)")
    where.add_argument("--competition", default=locations.COMPETITION, help="competition input slug")
    where.add_argument("--weights-dataset", default=None, help="weights dataset slug under the input root")
    where.add_argument("--data-dir", type=Path, help="holds test_images/ and sample_submission.csv")
    where.add_argument("--images-dir", type=Path, help="the test JPEGs (default: DATA_DIR/test_images)")
    where.add_argument("--sample-csv", type=Path, help="default: DATA_DIR/sample_submission.csv")
    where.add_argument("--weights-dir", type=Path, help="the model dirs named in the manifest")
    where.add_argument("--out", type=Path, help="submission CSV to write (default: /kaggle/working/...)")
    run = p.add_argument_group("how")
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    run.add_argument("--limit", type=int, default=None, help="predict only the first N images (others empty)")
    run.add_argument("--budget-s", type=float, default=None, help="time limit (default: the manifest's)")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--workers", type=int, default=2, help="JPEG decoding processes (0: in this process)")
    run.add_argument("--amp", choices=("auto", "fp16", "bf16", "off"), default="auto")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 when prediction fails mid-run (default: exit 0 with the complete, partly empty "
        "submission, so Kaggle still scores it; the failure is logged either way)",
    )
    return p.parse_args(argv)


def log_versions() -> list[str]:
    """Log python, the accelerator and each package's version and origin; returns the import failures."""
    log.info("python %s (%s) on %s", platform.python_version(), sys.executable, platform.platform())
    failures = []
    for name in LOGGED_PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # an incompatible version fails in many ways; each is reported the same
            failures.append(f"{name}: cannot be imported: {type(exc).__name__}: {exc}")
            continue
        origin = Path(module.__file__).parent if getattr(module, "__file__", None) else "?"
        log.info("%s %s from %s", name, getattr(module, "__version__", "?"), origin)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"
        log.info("cuda %s, cudnn %s, %s", torch.version.cuda, torch.backends.cudnn.version(), gpu)
    return failures


def resolve_paths(args: argparse.Namespace, where: locations.Locations) -> Paths:
    """The run's paths from the flags, else the Kaggle (or local) defaults; FileNotFoundError when missing.

    Defaults: the competition's and the weights dataset's folders under the input root, each found by its
    marker file when it is not where its slug says (Kaggle has mounted inputs at other depths before).
    """
    data_dir = args.data_dir
    if data_dir is None and not (args.images_dir and args.sample_csv):
        data_dir = find_input(where.input_root, where.dataset_dir(args.competition), SAMPLE_FILE)
    weights_dir = args.weights_dir
    if weights_dir is None:
        preferred = where.dataset_dir(args.weights_dataset) if args.weights_dataset else None
        weights_dir = find_input(where.input_root, preferred, MANIFEST_FILE)
    paths = Paths(
        images_dir=args.images_dir or data_dir / "test_images",
        sample_csv=args.sample_csv or data_dir / SAMPLE_FILE,
        weights_dir=weights_dir,
        out_csv=args.out or where.submission_csv,
    )
    if not paths.images_dir.is_dir():
        raise FileNotFoundError(f"{paths.images_dir}: test image folder not found")
    if not paths.sample_csv.is_file():
        raise FileNotFoundError(f"{paths.sample_csv}: sample submission not found")
    if not paths.weights_dir.is_dir():
        raise FileNotFoundError(f"{paths.weights_dir}: weights folder not found")
    return paths


def find_input(root: Path, preferred: Path | None, marker: str) -> Path:
    """`preferred` when it holds `marker`, else the one folder up to 3 levels under `root` that does."""
    if preferred is not None and (preferred / marker).is_file():
        return preferred
    found = sorted({p.parent for depth in (1, 2, 3) for p in root.glob("*/" * depth + marker)})
    if len(found) != 1:
        expected = f"{preferred / marker} not found; " if preferred is not None else ""
        raise FileNotFoundError(
            f"{expected}expected one folder under {root} holding {marker}, found {[str(p) for p in found]}"
        )
    return found[0]


def main(argv: list[str], manifest: dict[str, Any], rules: dict[str, Any]) -> int:
    """Run the kernel; `manifest` and `rules` are the embedded `manifest.json` and `thresholds.json`."""
    start = time.perf_counter()
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("steel_seg").setLevel(logging.INFO)
    failures = log_versions()
    if failures:
        return _fail("\n".join(failures))
    # Imported only now that torch, smp and pandas are known to import (and were logged).
    from steel_seg import submission

    try:
        ensemble, parsed_rules, paths, settings = startup(args, manifest, rules, start)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        return _fail(str(exc))
    log.info(
        "start-up checks passed in %.1fs: %d model(s) verified in %s; predicting %s -> %s",
        time.perf_counter() - start,
        len(ensemble.members),
        paths.weights_dir,
        paths.images_dir,
        paths.out_csv,
    )
    code = _predict(ensemble, parsed_rules, paths, settings)
    if code == RUN_FAILED and not args.strict:
        log.error("DEGRADED RUN: prediction failed mid-run (see above); the submission is complete and valid")
        code = OK
    problems = submission.validate(paths.out_csv, paths.sample_csv)
    for problem in problems:
        log.error("invalid submission %s: %s", paths.out_csv, problem)
    code = code or (INVALID if problems else OK)
    log.info("kernel done in %.1fs, exit code %d", time.perf_counter() - start, code)
    return code


def startup(
    args: argparse.Namespace, manifest: dict[str, Any], rules: dict[str, Any], start: float
) -> tuple[Ensemble, Rules, Paths, PredictSettings]:
    """Every check before the first image: paths, sample, rules, manifest, each model's sha256 and spec."""
    from steel_seg import submission
    from steel_seg.manifest import Manifest
    from steel_seg.postprocess import Rules
    from steel_seg.predict import Ensemble, PredictSettings

    paths = resolve_paths(args, locations.locate())
    settings = PredictSettings(
        device=args.device or locations.default_device(),
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        budget_s=args.budget_s,
        budget_start=start,
        limit=args.limit,
        progress=not args.no_progress,
    )
    submission.read_sample(paths.sample_csv)
    parsed_rules = Rules.from_dict(rules)
    ensemble = Ensemble.load(paths.weights_dir, Manifest.from_dict(manifest), settings.device)
    return ensemble, parsed_rules, paths, settings


def _predict(ensemble: Ensemble, rules: Rules, paths: Paths, settings: PredictSettings) -> int:
    """Run the engine; when it fails, make sure a complete submission exists and return RUN_FAILED.

    The old output is removed first, so a file found after a failure is this run's (the engine writes it only
    when complete); otherwise an all-empty submission is written in the sample's layout.
    """
    from steel_seg import submission
    from steel_seg.predict import predict_submission

    paths.out_csv.unlink(missing_ok=True)
    try:
        predict_submission(ensemble, rules, paths.images_dir, paths.sample_csv, paths.out_csv, settings)
    except Exception:
        log.exception("prediction failed mid-run")
        if not paths.out_csv.is_file() or submission.validate(paths.out_csv, paths.sample_csv):
            log.error("%s: writing an all-empty submission in its place", paths.out_csv)
            with submission.SubmissionWriter(paths.out_csv, submission.read_sample(paths.sample_csv)):
                pass
        return RUN_FAILED
    return OK


def _fail(message: str) -> int:
    log.error("start-up check failed, nothing predicted:\n%s", message)
    return STARTUP_FAILED
