"""The Kaggle kernel's entry: `main(argv, manifest, rules)`, called by the bundled script (see `bundle`).

Start-up checks come first and fail fast (exit 2, no submission written, no image read): the imports and
where each came from, the input paths (found through `locations`: the competition folder by its marker files,
the weights by `manifest.json`, a model dir absent from it by its sha256 anywhere under the input root), then
`submit.load`: the sample, every device (a GPU this torch build cannot run, or none at all, stops the run
naming the `machine_shape` to ask for), the rules, every model's sha256 and spec. Then `submit.run` (the same
path as `steel-seg predict`, on every visible GPU) streams the submission and validates it. `--budget-s` is a
hard limit counted from the script's start: at the limit the rest is written empty and the run exits 0.
A failure after the checks still leaves a complete submission: the rows already predicted are kept, the rest
are written empty and the traceback is logged. The exit code is then 0 (a kernel that exits non-zero on
Kaggle gives no submission at all, a degraded one still scores) unless `--strict` (local dry runs, tests),
which makes it 3. An invalid submission exits 4; the engine logs the timing summary (images/s, share per
stage).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steel_seg.competition import SAMPLE_SUBMISSION, SLUG, TEST_IMAGES
from steel_seg.engine.options import add_budget_option, add_engine_options, add_recipe_option, engine_settings

if TYPE_CHECKING:
    from steel_seg.engine.locations import Locations
    from steel_seg.engine.submit import Inputs
    from steel_seg.models.manifest import Manifest

log = logging.getLogger("steel_seg.kernel")

OK, STARTUP_FAILED, RUN_FAILED, INVALID = 0, 2, 3, 4
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kernel.py", description="Predict the Severstal test set offline.")
    where = p.add_argument_group("where (defaults: the Kaggle paths)")
    where.add_argument("--competition", default=SLUG, help="competition input slug")
    where.add_argument("--weights-dataset", default=None, help="weights dataset slug under the input root")
    where.add_argument("--data-dir", type=Path, help="holds test_images/ and sample_submission.csv")
    where.add_argument("--images-dir", type=Path, help="the test JPEGs (default: DATA_DIR/test_images)")
    where.add_argument("--sample-csv", type=Path, help="default: DATA_DIR/sample_submission.csv")
    where.add_argument(
        "--weights-dir",
        type=Path,
        help="the model dirs named in the manifest (default: found under the input root by manifest.json, "
        "a model dir missing there by its sha256)",
    )
    where.add_argument("--out", type=Path, help="submission CSV to write (default: /kaggle/working/...)")
    run = p.add_argument_group("how")
    add_engine_options(run, limit_help="predict only the first N images (others empty)")
    add_budget_option(run)
    add_recipe_option(run)
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
        from steel_seg.engine.devices import describe

        torch = sys.modules["torch"]
        log.info("cuda %s, cudnn %s, %s", torch.version.cuda, torch.backends.cudnn.version(), describe())
    return failures


def resolve_inputs(args: argparse.Namespace, where: Locations, manifest: Manifest | None = None) -> Inputs:
    """The run's inputs from the flags, else found under the input root (`Locations.find_input`).

    Without `--weights-dir` a model dir absent from the weights folder is searched by its sha256 under the
    input root; with no `manifest.json` anywhere, the input root itself is the weights folder.
    """
    from steel_seg.engine.submit import Inputs

    data_dir = args.data_dir
    if data_dir is None and not (args.images_dir and args.sample_csv):
        data_dir = where.find_competition_dir(args.competition)
    return Inputs(
        images_dir=args.images_dir or data_dir / TEST_IMAGES,
        sample_csv=args.sample_csv or data_dir / SAMPLE_SUBMISSION,
        weights_dir=args.weights_dir or find_weights_dir(where, args.weights_dataset, manifest),
        out_csv=args.out or where.submission_csv,
        search_root=None if args.weights_dir else where.input_root,
    )


def find_weights_dir(where: Locations, slug: str | None, manifest: Manifest | None) -> Path:
    """The folder holding `manifest.json`: `slug`'s dataset, else the only one, else the one whose manifest
    lists the embedded manifest's weights; the input root when no folder holds one."""
    from steel_seg.models.manifest import MANIFEST_FILE

    if not where.holding(MANIFEST_FILE):
        return where.input_root
    wanted = None if manifest is None else sorted(m.sha256 for m in manifest.models)
    return where.find_input(MANIFEST_FILE, slug, prefer=lambda d: _listed_sha256(d / MANIFEST_FILE) == wanted)


def _listed_sha256(path: Path) -> list[str] | None:
    """The sorted weight checksums a manifest.json lists; None when it cannot be read as one."""
    try:
        return sorted(str(m["sha256"]).lower() for m in json.loads(path.read_text())["models"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str], manifest: dict[str, Any], rules: dict[str, Any], start: float | None = None) -> int:
    """Run the kernel; `manifest` and `rules` are the embedded `manifest.json` and `thresholds.json`.

    `start` is the script's own start (a `time.perf_counter()` value): `--budget-s` counts from it.
    """
    start = time.perf_counter() if start is None else start
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("steel_seg").setLevel(logging.INFO)
    failures = log_versions()
    if failures:
        return _fail("\n".join(failures))
    # Imported only now that torch, smp and pandas are known to import (and were logged).
    from steel_seg.engine import locations, submit
    from steel_seg.models.manifest import Manifest
    from steel_seg.postprocess.rules import Rules

    try:
        embedded = Manifest.from_dict(manifest)
        inputs = resolve_inputs(args, locations.locate(), embedded)
        settings = engine_settings(args, require_gpu=True, budget_start=start)
        parsed_rules = Rules.from_dict(rules)
        ensemble = submit.load(inputs, embedded, parsed_rules, settings, args.allow_recipe_mismatch)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        return _fail(str(exc))
    log.info(
        "start-up checks passed in %.1fs: %d model(s) verified in %s; predicting %s -> %s on %s",
        time.perf_counter() - start,
        len(ensemble.members),
        inputs.weights_dir,
        inputs.images_dir,
        inputs.out_csv,
        settings.device,
    )
    outcome = submit.run(ensemble, parsed_rules, inputs, settings)
    code = RUN_FAILED if outcome.error and args.strict else OK
    if outcome.error and not args.strict:
        log.error("DEGRADED RUN: prediction failed mid-run (see above); the submission is complete and valid")
    for problem in outcome.problems:
        log.error("invalid submission %s: %s", inputs.out_csv, problem)
    code = code or (INVALID if outcome.problems else OK)
    log.info("kernel done in %.1fs, exit code %d", time.perf_counter() - start, code)
    return code


def _fail(message: str) -> int:
    log.error("start-up check failed, nothing predicted:\n%s", message)
    return STARTUP_FAILED
