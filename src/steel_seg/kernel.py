"""The Kaggle kernel's entry: `main(argv, manifest, rules)`, called by the bundled script (see `bundle`).

Which run this is comes first (`locations`): every `KAGGLE_*` variable is logged. Kaggle runs a code-
competition kernel twice: the push run (`kaggle kernels push`), whose output is not scored, and the scoring
re-run on the hidden test set (`KAGGLE_IS_COMPETITION_RERUN`). The push run predicts only `--push-sample`
images with the full ensemble (the rest empty), then prints the measured images/s and the projected time of
the full set against the budget: the first real timing on Kaggle's GPU, without spending the hour. The re-run
predicts every image. A local run predicts what it is asked (`--limit`).

Start-up checks fail fast (exit 2, no image read): the imports and where each came from, the input paths
(found through `locations`: the competition folder by its marker files, the weights by `manifest.json`, a
model dir absent from it by its sha256 anywhere under the input root), the output (writable, not a folder,
not an input), then `submit.load`: the sample, every device (a GPU this torch build cannot run, or none at
all, stops the run naming the `machine_shape` to ask for), the rules, every model's sha256 and spec, and one
image through the ensemble on every device. Then `submit.run` (the same path as `steel-seg predict`, on every
visible GPU) streams the submission and validates it. `--budget-s` is a hard limit counted from the script's
start: at the limit the rest is written empty and the run exits 0. A failure after the checks still leaves a
complete submission: the rows already predicted are kept, the rest are written empty and the traceback is
logged; the exit code is then 0 (a kernel that exits non-zero on Kaggle gives no submission at all, a
degraded one still scores) unless `--strict` (local dry runs, tests), which makes it 3. A run that wrote no
file exits 3, an invalid file 4.

On the scoring re-run nothing ends without a file: whatever would have ended the run with a non-zero code
(a start-up check, no GPU, a missing weights dataset, an invalid file, an unexpected error) is logged loudly,
the best valid submission is written instead (this run's rows where it wrote any, every other pair empty)
and the exit code is 0. Only a run that cannot write any file (no sample, no writable output) exits non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steel_seg.competition import SAMPLE_SUBMISSION, SLUG, TEST_IMAGES
from steel_seg.engine.locations import RERUN_VARIABLE, locate
from steel_seg.engine.options import (
    add_budget_option,
    add_engine_options,
    add_final_format_option,
    add_recipe_option,
    count,
    engine_settings,
)

if TYPE_CHECKING:
    from steel_seg.engine.locations import Locations
    from steel_seg.engine.predict import RunSummary
    from steel_seg.engine.submit import Inputs, Outcome
    from steel_seg.models.manifest import Manifest

log = logging.getLogger("steel_seg.kernel")

OK, STARTUP_FAILED, RUN_FAILED, INVALID = 0, 2, 3, 4
PUSH_SAMPLE = 200  # images the push run predicts by default
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


@dataclass
class Attempt:
    """What the run has settled so far, for the scoring re-run's fall-back: where the submission goes, the
    sample it follows, and whether this run wrote a file there."""

    out_csv: Path | None = None
    sample_csv: Path | None = None
    written: bool = False


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
    add_engine_options(run, limit_help="predict only the first N images (others empty; not on the re-run)")
    add_budget_option(run)
    add_recipe_option(run)
    add_final_format_option(run)
    run.add_argument(
        "--push-sample",
        type=count,
        default=PUSH_SAMPLE,
        help="on Kaggle's push run (not the scoring re-run) predict only the first N images with the full "
        "ensemble, write the rest empty and print the projected time of the full set (0: predict all; "
        "default %(default)s)",
    )
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 when prediction fails mid-run (default: exit 0 with the complete, partly empty "
        "submission, so Kaggle still scores it; the failure is logged either way; not on the re-run)",
    )
    return p.parse_args(argv)


def log_run(where: Locations) -> None:
    """Which run this is, and every KAGGLE_* variable (secrets masked)."""
    log.info("run: %s (%s %s)", where.run, RERUN_VARIABLE,
             "set" if where.rerun else "not set")  # fmt: skip
    for name, value in where.kaggle_env:
        log.info("%s=%s", name, value)
    if not where.kaggle_env:
        log.info("no KAGGLE_* variable is set")


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
    """The folder holding `manifest.json`: the one whose manifest lists the embedded manifest's weights (a
    stale dataset at the slug loses to a matching one elsewhere, both logged), else the one named `slug`,
    else the only one; the input root when no folder holds one."""
    from steel_seg.models.manifest import MANIFEST_FILE

    if not where.holding(MANIFEST_FILE):
        return where.input_root
    if manifest is None:
        return where.find_input(MANIFEST_FILE, slug)
    wanted = sorted(m.sha256 for m in manifest.models)
    lists_them = (lambda d: _listed_sha256(d / MANIFEST_FILE) == wanted, "listing this kernel's weights")
    return where.find_input(MANIFEST_FILE, slug, prefer=lists_them)


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
    where, attempt = locate(), Attempt()
    log_run(where)
    try:
        code = run(args, where, manifest, rules, start, attempt)
    except Exception:
        if not where.rerun:
            raise
        log.exception("unexpected error")
        code = RUN_FAILED
    if where.rerun and code != OK:
        code = fall_back(args, where, attempt, code)
    log.info("kernel done in %.1fs, exit code %d", time.perf_counter() - start, code)
    return code


def run(
    args: argparse.Namespace,
    where: Locations,
    manifest: dict[str, Any],
    rules: dict[str, Any],
    start: float,
    attempt: Attempt,
) -> int:
    """Start-up checks, then the prediction; the exit code (module docstring)."""
    failures = log_versions()
    if failures:
        return _fail("\n".join(failures))
    # Imported only now that torch, smp and pandas are known to import (and were logged).
    from steel_seg.engine import submit
    from steel_seg.models.manifest import Manifest
    from steel_seg.postprocess.rules import Rules

    try:
        embedded = Manifest.from_dict(manifest)
        inputs = resolve_inputs(args, where, embedded)
        attempt.out_csv, attempt.sample_csv = inputs.out_csv, inputs.sample_csv
        settings = engine_settings(args, require_gpu=True, budget_start=start)
        settings = dataclasses.replace(settings, limit=run_limit(args, where))
        parsed_rules = Rules.from_dict(rules)
        ensemble = submit.load(inputs, embedded, parsed_rules, settings, args.allow_recipe_mismatch)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        return _fail(str(exc))
    startup_s = time.perf_counter() - start
    log.info("start-up checks passed in %.1fs: %d model(s) verified in %s; predicting %s -> %s on %s",
             startup_s, len(ensemble.members), inputs.weights_dir, inputs.images_dir, inputs.out_csv,
             settings.device)  # fmt: skip
    outcome = submit.run(ensemble, parsed_rules, inputs, settings)
    attempt.written = outcome.written
    if where.run == "push run" and outcome.summary is not None and settings.limit is not None:
        log.warning("%s", push_report(outcome.summary, inputs.sample_csv, startup_s, len(settings.devices())))
    return exit_code(outcome, inputs.out_csv, args.strict)


def exit_code(outcome: Outcome, out_csv: Path, strict: bool) -> int:
    """What a finished run exits with, logged: 3 when it wrote no file (or failed mid-run under `--strict`),
    4 for an invalid file, else 0 (a failure mid-run left a complete file: DEGRADED)."""
    if not outcome.written:
        log.error("NO SUBMISSION: this run wrote nothing at %s (%s); an earlier file there is unchanged",
                  out_csv, outcome.error or "see above")  # fmt: skip
        return RUN_FAILED
    for problem in outcome.problems:
        log.error("invalid submission %s: %s", out_csv, problem)
    if outcome.problems:
        return INVALID
    if outcome.error:
        log.error("DEGRADED RUN: prediction failed mid-run (see above); %s is complete and valid, the images "
                  "not reached are written empty", out_csv)  # fmt: skip
    return RUN_FAILED if outcome.error and strict else OK


def run_limit(args: argparse.Namespace, where: Locations) -> int | None:
    """How many images this run predicts: every one on the re-run (`--limit` is ignored there, loudly),
    `--push-sample` on the push run unless `--limit` says otherwise, else `--limit`."""
    if where.rerun:
        if args.limit is not None:
            log.warning("scoring re-run: --limit %d ignored, every image is predicted", args.limit)
        return None
    if where.run == "push run" and args.limit is None and args.push_sample:
        return args.push_sample
    return args.limit


def push_report(summary: RunSummary, sample_csv: Path, startup_s: float, n_devices: int) -> str:
    """The push run's verdict: what it predicted, the measured rate, and the projected full run."""
    from steel_seg.engine.budget import projection
    from steel_seg.engine.ensemble import views_text
    from steel_seg.formats.submission import read_sample

    total = len(read_sample(sample_csv).image_ids)
    done = summary.images - summary.cut
    rate = summary.steady_images_per_s or summary.images_per_s
    measured = (
        f"{rate:.2f} images/s after the warm-up batches ({summary.images_per_s:.2f} with them)"
        if summary.steady_images_per_s
        else f"{rate:.2f} images/s, warm-up included (too few batches to leave it out)"
    )
    lines = [
        f"PUSH RUN (not scored: Kaggle's scoring re-run predicts every image): predicted the first {done} of "
        f"{total} images with the full ensemble ({views_text(summary.plan)}) on {n_devices} device(s); the "
        f"other {total - done} are written empty",
        f"  measured {measured}; start-up {startup_s:.1f}s",
    ]
    if rate > 0:
        lines.append(f"  {projection(rate, total, startup_s, summary.budget_s)}")
    return "\n".join(lines)


def fall_back(args: argparse.Namespace, where: Locations, attempt: Attempt, code: int) -> int:
    """The scoring re-run's last resort after a run that would have exited `code`: the best valid
    submission (this run's rows where it wrote a file, every other pair empty), exit 0; `code` when no
    file can be written at all."""
    log.error("SCORING RE-RUN: the run would have ended with exit code %d (the reason is above); writing the "
              "best valid submission instead and exiting 0", code)  # fmt: skip
    try:
        from steel_seg.formats.submission import write_best

        out, sample = attempt.out_csv, attempt.sample_csv
        if out is None or sample is None:
            out, sample = fallback_paths(args, where)
        kept = write_best(out, sample, out if attempt.written else None, args.final_format)
    except Exception as exc:  # the last resort: whatever stops it is reported the same way
        log.error("SCORING RE-RUN: no submission could be written either: %s: %s", type(exc).__name__, exc)
        return code
    log.error("SCORING RE-RUN: %s is a valid submission with %d predicted mask(s); every other (image, "
              "class) pair is empty", out, kept)  # fmt: skip
    return OK


def fallback_paths(args: argparse.Namespace, where: Locations) -> tuple[Path, Path]:
    """(submission, sample) from the flags, else found under the input root, for a run that failed before
    it had resolved them; when several competition folders cannot be told apart, the first (logged): an
    all-empty file from one of them beats none."""
    sample = args.sample_csv
    if sample is None and args.data_dir is not None:
        sample = args.data_dir / SAMPLE_SUBMISSION
    if sample is None:
        try:
            sample = where.find_competition_dir(args.competition) / SAMPLE_SUBMISSION
        except FileNotFoundError:
            candidates = where.holding((SAMPLE_SUBMISSION, TEST_IMAGES))
            if not candidates:
                raise
            sample = candidates[0] / SAMPLE_SUBMISSION
            log.error("SCORING RE-RUN: taking the sample of %s, the first of %s", candidates[0],
                      [str(c) for c in candidates])  # fmt: skip
    return args.out or where.submission_csv, sample


def _fail(message: str) -> int:
    log.error("start-up check failed, nothing predicted:\n%s", message)
    return STARTUP_FAILED
