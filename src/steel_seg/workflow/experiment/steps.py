"""An experiment's steps: each one of the kit's own commands, with what it reads, what it writes and what it
waits for. Nothing here computes anything; `runner` runs these commands as they are printed.

```
OUT/folds.csv                       folds         steel-seg folds
OUT/runs/NAME-fK/                   train/NAME-fK steel-seg train (torchrun for gpus_per_job > 1)
OUT/weights/manifest.json, NAME-fK/ manifest      steel-seg manifest
OUT/oof/                            oof           steel-seg oof --weights-dir
OUT/weights/thresholds.json         tune          steel-seg tune
OUT/round1/{labels,runs,weights,oof} r1/...       pseudo round 1: steel-seg pseudo, then the four above again
OUT/reports/{eda,eval}/             report/eda, report/eval
OUT/kernel/kernel.py                build         python build_kernel.py (of the final round's weights)
OUT/submission.csv                  dry-run       python OUT/kernel/kernel.py --limit N
                                    validate      steel-seg validate
OUT/steps/, OUT/logs/               each step's record and log
```
A command's `args` are what the step computes (part of its record's key); its `where` (devices, workers,
batch size) only how fast it runs, so a run on another machine does not make it stale.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import steel_seg
from steel_seg.competition import TRAIN_CSV
from steel_seg.workflow.experiment.fingerprints import FILE, LISTING, TREE
from steel_seg.workflow.experiment.scheduler import ALL
from steel_seg.workflow.experiment.schema import Experiment, Model

FOLDS, TRAIN, MANIFEST, OOF, TUNE, PSEUDO = "folds", "train", "manifest", "oof", "tune", "pseudo"
REPORT, BUILD, DRY_RUN, VALIDATE = "report", "build", "dry-run", "validate"
STEEL_SEG, BUILDER = "steel-seg", "build_kernel.py"
PACKAGE = Path(steel_seg.__file__).resolve().parent
CHECKOUT = PACKAGE.parents[1]  # the source checkout (`pip install -e .`): build_kernel.py, the template
TEMPLATE = CHECKOUT / "kernel" / "bootstrap.py.tmpl"
_PLAIN = re.compile(r"^[\w./-]+$")


@dataclass(frozen=True, kw_only=True)
class Command:
    """One command line: `program` (STEEL_SEG, BUILDER or a script's path), `args` (what it computes) and
    `where` (how it runs); `nproc` > 1 runs it under torchrun."""

    program: str
    args: tuple[str, ...]
    where: tuple[str, ...] = ()
    nproc: int = 1

    @property
    def key(self) -> list[str]:
        return [self.program, *self.args]

    def shown(self, extra: tuple[str, ...] = ()) -> str:
        """As a user types it in the folder the experiment runs from."""
        words = [*self.args, *self.where, *extra]
        if self.program != STEEL_SEG:
            return shlex.join(["python", self.program, *words])
        if self.nproc > 1:
            return shlex.join(
                [
                    "torchrun",
                    "--standalone",
                    "--nproc_per_node",
                    str(self.nproc),
                    "-m",
                    "steel_seg.cli",
                    *words,
                ]
            )
        return shlex.join([STEEL_SEG, *words])

    def argv(self, extra: tuple[str, ...] = ()) -> list[str]:
        """What runs: this interpreter with the package CLI, the checkout's build_kernel.py or the script."""
        words = [*self.args, *self.where, *extra]
        if self.program == BUILDER:
            return [sys.executable, str(CHECKOUT / BUILDER), *words]
        if self.program != STEEL_SEG:
            return [sys.executable, self.program, *words]
        if self.nproc > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(self.nproc),
                "-m",
                "steel_seg.cli",
                *words,
            ]
        return [sys.executable, "-m", "steel_seg.cli", *words]


@dataclass(frozen=True, kw_only=True)
class Input:
    """A file or folder outside the experiment a step reads, fingerprinted as `kind` (FILE, LISTING, TREE)."""

    label: str
    path: str
    kind: str = FILE


@dataclass(frozen=True, kw_only=True)
class Step:
    """One command of the experiment. `deps`: the steps whose outputs it reads; `outputs`: the files it
    writes, fingerprinted when it ends; `target`: what it makes (a run dir, an OOF dir, a file), which must
    be the experiment's own before it is replaced; `gpus`: devices one job takes (0: a CPU step,
    `scheduler.ALL`: every one); a training step also carries its config, fold and `--set` overrides."""

    id: str
    kind: str
    command: Command
    deps: tuple[str, ...] = ()
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()
    target: str = ""
    gpus: int = 0
    config: str = ""
    fold: int | None = None
    overrides: tuple[tuple[str, Any], ...] = field(default=())


@dataclass(frozen=True)
class Layout:
    """Where the experiment's files go under `out`; round r > 0 of pseudo-labels under `out/round<r>`."""

    out: Path

    @property
    def folds(self) -> Path:
        return self.out / "folds.csv"

    @property
    def records(self) -> Path:
        return self.out / "steps"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def lock(self) -> Path:
        return self.out / ".lock"

    @property
    def submitit(self) -> Path:
        return self.out / "slurm"

    def round(self, r: int) -> Path:
        return self.out if r == 0 else self.out / f"round{r}"

    def weights(self, r: int) -> Path:
        return self.round(r) / "weights"

    def run(self, r: int, name: str, fold: int) -> Path:
        return self.round(r) / "runs" / f"{name}-f{fold}"


def prefix(r: int) -> str:
    """The id prefix of round `r`'s steps ("" for round 0, "r1/" ...)."""
    return f"r{r}/" if r else ""


def build_steps(exp: Experiment) -> list[Step]:
    """Every step of `exp`, each after the steps it reads from."""
    layout = Layout(Path(exp.out))
    steps = [folds_step(exp, layout)]
    for r in range(exp.pseudo.rounds + 1):
        steps += round_steps(exp, layout, r)
    return steps + final_steps(exp, layout)


def folds_step(exp: Experiment, layout: Layout) -> Step:
    d, f = exp.data, exp.folds
    threshold = () if f.hash_threshold is None else ("--hash-threshold", str(f.hash_threshold))
    args = ("folds", "--train-csv", d.train_csv, "--images", d.train_images, "--k", str(f.k), "--seed",
            str(f.seed), *threshold, "--out", str(layout.folds))  # fmt: skip
    return Step(id=FOLDS, kind=FOLDS, command=Command(program=STEEL_SEG, args=args), inputs=_train_data(exp),
                outputs=(str(layout.folds),), target=str(layout.folds))  # fmt: skip


def _train_data(exp: Experiment) -> tuple[Input, ...]:
    return (
        Input(label="data.train_csv", path=exp.data.train_csv),
        Input(label="data.train_images", path=exp.data.train_images, kind=LISTING),
    )


def round_steps(exp: Experiment, layout: Layout, r: int) -> list[Step]:
    """Round r: (r > 0: the pseudo-labels of round r-1's ensemble,) every model on every used fold, the
    manifest of them all, its OOF and the rules tuned on it."""
    steps = [pseudo_step(exp, layout, r)] if r else []
    steps += [train_step(exp, layout, r, name, fold) for name in _init_order(exp) for fold in exp.folds.used]
    trains = tuple(s.id for s in steps if s.kind == TRAIN)
    return [
        *steps,
        manifest_step(exp, layout, r, trains),
        oof_step(exp, layout, r),
        tune_step(exp, layout, r),
    ]


def manifest_step(exp: Experiment, layout: Layout, r: int, trains: tuple[str, ...]) -> Step:
    manifest = str(layout.weights(r) / "manifest.json")
    return Step(id=f"{prefix(r)}{MANIFEST}", kind=MANIFEST, command=manifest_command(exp, layout, r),
                deps=trains, outputs=(manifest,), target=manifest)  # fmt: skip


def oof_step(exp: Experiment, layout: Layout, r: int) -> Step:
    oof = layout.round(r) / "oof"
    command = _inference(exp, ("oof", "--weights-dir", str(layout.weights(r)), "--out", str(oof)))
    return Step(id=f"{prefix(r)}{OOF}", kind=OOF, command=command, deps=(f"{prefix(r)}{MANIFEST}",),
                outputs=(str(oof / "meta.json"),), target=str(oof), gpus=ALL)  # fmt: skip


def tune_step(exp: Experiment, layout: Layout, r: int) -> Step:
    """`tune` on the round's OOF into its weights dir (told when only some folds are trained)."""
    partial = ("--allow-partial-folds",) if len(exp.folds.used) < exp.folds.k else ()
    rules = str(layout.weights(r) / "thresholds.json")
    args = ("tune", "--oof", str(layout.round(r) / "oof"), "--out", rules, *partial)
    return Step(id=f"{prefix(r)}{TUNE}", kind=TUNE, command=Command(program=STEEL_SEG, args=args),
                deps=(f"{prefix(r)}{OOF}",), outputs=(rules,), target=rules)  # fmt: skip


def _init_order(exp: Experiment) -> list[str]:
    """Model names, each after the model its `init` names (a fine-tune stage after the run it starts from)."""
    order: list[str] = []

    def visit(name: str) -> None:
        init = exp.models[name].init
        if init and init not in order:
            visit(init)
        if name not in order:
            order.append(name)

    for name in exp.models:
        visit(name)
    return order


def train_step(exp: Experiment, layout: Layout, r: int, name: str, fold: int) -> Step:
    """`steel-seg train` of model `name` on `fold` (round r > 0: with that round's pseudo-labels)."""
    model, run, p = exp.models[name], layout.run(r, name, fold), prefix(r)
    overrides = _overrides(exp, layout, r, model, fold)
    sets = tuple(word for key, value in overrides for word in ("--set", f"{key}={_yaml(value)}"))
    args = ("train", "--config", model.config, "--fold", str(fold), "--out", str(run), *sets)
    deps = (
        FOLDS,
        *((f"{p}{PSEUDO}",) if r else ()),
        *((f"{p}{TRAIN}/{model.init}-f{fold}",) if model.init else ()),
    )
    test_images = (Input(label="data.test_images", path=exp.data.test_images, kind=LISTING),) if r else ()
    inputs = (Input(label=f"models.{name}.config", path=model.config), *_train_data(exp), *test_images)
    best = run / "best"
    return Step(id=f"{p}{TRAIN}/{name}-f{fold}", kind=TRAIN, deps=deps, inputs=inputs,
                command=Command(program=STEEL_SEG, args=args, nproc=model.gpus_per_job),
                outputs=(str(best / "model.safetensors"), str(best / "spec.json")), target=str(run),
                gpus=model.gpus_per_job, config=model.config, fold=fold, overrides=overrides)  # fmt: skip


def _overrides(
    exp: Experiment, layout: Layout, r: int, model: Model, fold: int
) -> tuple[tuple[str, Any], ...]:
    """The `--set` keys of a training step: the experiment's data and folds, the init run, round r's
    pseudo-labels as the extra source, then the model's own `set`."""
    d = exp.data
    owned: list[tuple[str, Any]] = [
        ("data.train_csv", d.train_csv),
        ("data.images_dir", d.train_images),
        ("data.folds_csv", str(layout.folds)),
    ]
    if model.init:
        owned.append(("model.init_weights", str(layout.run(r, model.init, fold))))
    if r:
        labels = layout.round(r) / "labels" / TRAIN_CSV
        source = {"train_csv": str(labels), "images_dir": d.test_images, "weight": exp.pseudo.weight}
        owned.append(("data.extra_sources", [source]))
        if exp.pseudo.share is not None:
            owned.append(("data.extra_share", exp.pseudo.share))
    return (*owned, *model.set.items())


def _yaml(value: Any) -> str:
    """A `--set` value that `train` reads back as `value` (JSON is YAML; plain words and paths as is)."""
    if isinstance(value, str) and _PLAIN.match(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def manifest_command(exp: Experiment, layout: Layout, r: int) -> Command:
    """`steel-seg manifest` of every model's run of every used fold (`NAME-fK`), its weights and views."""
    models = [(name, fold) for name in exp.models for fold in exp.folds.used]
    pairs = [
        w
        for name, fold in models
        for w in ("--model", f"{name}-f{fold}={layout.run(r, name, fold) / 'best'}")
    ]
    weights = [exp.models[name].weight for name, _ in models]
    weight_args = [w for v in weights for w in ("--weight", f"{v:g}")] if set(weights) != {1.0} else []
    cls = ("--cls-tta", ",".join(exp.cls_tta)) if exp.cls_tta is not None else ()
    args = ("manifest", "--weights-dir", str(layout.weights(r)), *pairs, "--tta", ",".join(exp.tta), *cls,
            *weight_args)  # fmt: skip
    return Command(program=STEEL_SEG, args=args)


def _inference(exp: Experiment, args: tuple[str, ...], program: str = STEEL_SEG) -> Command:
    """An engine command, with the experiment's `inference` options as its `where` (devices filled in
    when the run starts: `with_devices`)."""
    i = exp.inference
    where = ("--workers", str(i.workers), "--batch-size", str(i.batch_size), "--no-progress")
    return Command(program=program, args=args, where=where)


def pseudo_step(exp: Experiment, layout: Layout, r: int) -> Step:
    """`steel-seg pseudo` of round r-1's tuned ensemble over the test images, into round r's labels."""
    p, labels = exp.pseudo, layout.round(r) / "labels"
    limits = {
        "--positive": p.positive,
        "--negative": p.negative,
        "--min-pixel-confidence": p.min_pixel_confidence,
    }
    given = tuple(w for flag, v in limits.items() if v is not None for w in (flag, f"{v:g}"))
    args = ("pseudo", "--weights-dir", str(layout.weights(r - 1)), "--images", exp.data.test_images, "--out",
            str(labels), "--tta", ",".join(exp.tta), *given)  # fmt: skip
    images = Input(label="data.test_images", path=exp.data.test_images, kind=LISTING)
    return Step(id=f"{prefix(r)}{PSEUDO}", kind=PSEUDO, command=_inference(exp, args),
                deps=(f"{prefix(r - 1)}{TUNE}",), outputs=(str(labels / TRAIN_CSV),), target=str(labels),
                inputs=(images,), gpus=ALL)  # fmt: skip


def final_steps(exp: Experiment, layout: Layout) -> list[Step]:
    """The reports, the kernel of the last round's weights, its dry run and the validation of that."""
    last = exp.pseudo.rounds
    reads = (f"{prefix(last)}{MANIFEST}", f"{prefix(last)}{TUNE}")
    weights, oof = layout.weights(last), layout.round(last) / "oof"
    submission = str(layout.out / "submission.csv")
    reports = _report_steps(exp, layout, prefix(last), weights, oof)
    dry_run = dry_run_step(exp, layout, weights, reads, submission)
    return [*reports, build_step(exp, layout, weights, reads), dry_run, validate_step(exp, submission)]


def build_step(exp: Experiment, layout: Layout, weights: Path, reads: tuple[str, ...]) -> Step:
    """`build_kernel.py` of the final weights (it embeds the package's sources and the template)."""
    k = exp.kernel
    optional = {"--kaggle-user": k.kaggle_user, "--budget-s": k.budget_s, "--batch-size": k.batch_size}
    given = tuple(w for flag, v in optional.items() if v is not None
                  for w in (flag, f"{v:g}" if isinstance(v, float) else str(v)))  # fmt: skip
    script = str(layout.out / "kernel" / "kernel.py")
    args = ("--weights-dir", str(weights), "--out", str(Path(script).parent), "--weights-dataset",
            k.weights_dataset, *given)  # fmt: skip
    sources = (Input(label="steel_seg sources", path=str(PACKAGE), kind=TREE),
               Input(label="kernel template", path=str(TEMPLATE)))  # fmt: skip
    return Step(id=BUILD, kind=BUILD, command=Command(program=BUILDER, args=args), deps=reads,
                outputs=(script,), target=script, inputs=sources)  # fmt: skip


def dry_run_step(exp: Experiment, layout: Layout, weights: Path, reads: tuple[str, ...], out: str) -> Step:
    """The built kernel on the first `dry_run_images` test images, the weights dir beside it."""
    d, n = exp.data, exp.kernel.dry_run_images
    args = ("--images-dir", d.test_images, "--sample-csv", d.sample_submission, "--weights-dir", str(weights),
            "--out", out, *(() if n is None else ("--limit", str(n))))  # fmt: skip
    inputs = (Input(label="data.test_images", path=d.test_images, kind=LISTING),
              Input(label="data.sample_submission", path=d.sample_submission))  # fmt: skip
    script = str(layout.out / "kernel" / "kernel.py")
    return Step(id=DRY_RUN, kind=DRY_RUN, command=_inference(exp, args, program=script), deps=(BUILD, *reads),
                outputs=(out,), target=out, gpus=ALL, inputs=inputs)  # fmt: skip


def validate_step(exp: Experiment, submission: str) -> Step:
    sample = exp.data.sample_submission
    args = ("validate", "--sample", sample, "--pred", submission)
    return Step(id=VALIDATE, kind=VALIDATE, command=Command(program=STEEL_SEG, args=args), deps=(DRY_RUN,),
                inputs=(Input(label="data.sample_submission", path=sample),))  # fmt: skip


def _report_steps(exp: Experiment, layout: Layout, p: str, weights: Path, oof: Path) -> list[Step]:
    d, steps = exp.data, []
    if exp.reports.eda:
        args = ("--train-csv", d.train_csv, "--images", d.train_images)
        steps.append(_report_step(layout, "eda", args, inputs=_train_data(exp)))
    if exp.reports.eval:
        rules = str(weights / "thresholds.json")
        args = ("--oof", str(oof), "--thresholds", rules, "--images", d.train_images)
        steps.append(_report_step(layout, "eval", args, deps=(f"{p}{OOF}", f"{p}{TUNE}")))
    return steps


def _report_step(layout: Layout, name: str, args: tuple[str, ...], **links: Any) -> Step:
    """`steel-seg report <name> ARGS --out OUT/reports/<name>`, whose target is its report.html."""
    html = layout.out / "reports" / name / "report.html"
    command = Command(program=STEEL_SEG, args=("report", name, *args, "--out", str(html.parent)))
    return Step(id=f"{REPORT}/{name}", kind=REPORT, command=command, outputs=(str(html),), target=str(html),
                **links)  # fmt: skip


def with_devices(command: Command, devices: str) -> Command:
    """An inference command run on `devices` (`--devices cpu` / `cuda`)."""
    return Command(
        program=command.program,
        args=command.args,
        where=("--devices", devices, *command.where),
        nproc=command.nproc,
    )
