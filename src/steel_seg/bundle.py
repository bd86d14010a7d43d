"""The kernel builder: ONE self-contained offline Kaggle script from the package, the manifest and the rules.

The script (`kernel/kernel.py`) carries the inference side of `steel_seg` (`KERNEL_PARTS`: no training,
reports, CLI, workflows or synthetic data) and the vendored pure-python packages
(`segmentation_models_pytorch` with its LICENSE), each file gzip-compressed (mtime 0) and base64-encoded in
sorted order, plus the weights manifest and the post-processing rules as JSON. At start it unpacks them into a
content-addressed temp dir, puts that dir FIRST on `sys.path` and calls `steel_seg.kernel.main`.
Same inputs give byte-identical output: no timestamps, sorted files, canonical JSON.

With a Kaggle user, `kernel-metadata.json` (GPU on, internet off, `machine_shape`: the T4 unless asked
otherwise) and the weights' `dataset-metadata.json` are written too; slugs and titles are checked against
Kaggle's rules before anything is written, since the CLI rejects them only at upload time. Kaggle runs a
script without a command line, so the kernel options a user wants on Kaggle (`KernelDefaults`: budget, batch
size, push-run sample, final format) are baked into the script's default arguments. The Kaggle CLI commands
the summary prints take paths as given, relative to the current folder where they lie under it, quoted.

Vendored: only smp. Its other imports are `timm`, `huggingface_hub` and `safetensors`; Kaggle's image has
timm, and timm itself requires huggingface_hub and safetensors (a compiled package), so wherever timm is
installed those two are too; the kernel logs their versions at start.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import string
from dataclasses import dataclass
from pathlib import Path

import steel_seg
from steel_seg import fileio
from steel_seg.competition import FINAL_FORMATS, SLUG, SUBMISSION
from steel_seg.engine.devices import DEFAULT_MACHINE_SHAPE, GPU_MACHINE_SHAPES, RETIRED_MACHINE_SHAPES
from steel_seg.models.manifest import MANIFEST_FILE, Manifest, check_model_dir, load_model
from steel_seg.models.recipe import check_tuned
from steel_seg.postprocess.rules import THRESHOLDS_FILE, Rules

SCRIPT_FILE = "kernel.py"
KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
VENDORED = ("segmentation_models_pytorch",)
# The parts of steel_seg the kernel runs (docs/ARCHITECTURE.md); a test runs the built kernel with the others'
# imports blocked, and another proves from the imports that nothing here reaches them.
KERNEL_PARTS = (
    "__init__.py",
    "competition.py",
    "fileio.py",
    "progress.py",
    "workers.py",
    "kernel.py",
    "formats",
    "models",
    "postprocess",
    "engine",
)
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING", "NOTICE")
SLUG_RULE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")  # Kaggle: lowercase letters, digits, hyphens
DATASET_TITLE_CHARS = (6, 50)
KERNEL_TITLE_MIN_CHARS = 6  # "longer than 5"
ACCELERATOR_FLAG_SINCE = (1, 8, 4)  # the Kaggle CLI version that added `kernels push --accelerator`


class BuildError(ValueError):
    """The kernel cannot be built; the message names the file and what is wrong."""


@dataclass(frozen=True)
class KaggleIds:
    """Where the kernel lives on Kaggle: `user/kernel_slug`, reading `user/weights_slug` and the competition.

    Without `user` the script is still built (it needs only the slugs), but no Kaggle metadata is written.
    Titles are the slugs with spaces for hyphens (Kaggle derives a kernel's slug from its title).
    """

    user: str | None = None
    kernel_slug: str = "steel-seg-kernel"
    weights_slug: str = "steel-seg-weights"
    competition: str = SLUG
    license: str = "CC0-1.0"
    machine_shape: str = DEFAULT_MACHINE_SHAPE

    @property
    def kernel_title(self) -> str:
        return self.kernel_slug.replace("-", " ")

    @property
    def dataset_title(self) -> str:
        return self.weights_slug.replace("-", " ")

    def check(self) -> list[str]:
        """Kaggle's rules on slugs, titles and the machine shape; returns warnings.

        Raises:
            BuildError: every rule broken, one per line.
        """
        problems = self._slug_problems() + self._title_problems()
        if self.machine_shape not in (*GPU_MACHINE_SHAPES, *RETIRED_MACHINE_SHAPES):
            shapes = ", ".join(GPU_MACHINE_SHAPES)
            problems.append(f"--machine-shape {self.machine_shape!r}: not a Kaggle GPU; use one of {shapes}")
        if problems:
            raise BuildError("\n".join(problems))
        retired = RETIRED_MACHINE_SHAPES.get(self.machine_shape)
        if retired is None:
            return []
        return [
            f"--machine-shape {self.machine_shape} is retired ({retired}): Kaggle runs its default GPU "
            f"instead, and should it not, the kernel stops at start-up. Use {DEFAULT_MACHINE_SHAPE}."
        ]

    def _slug_problems(self) -> list[str]:
        slugs = {"kernel-slug": self.kernel_slug, "weights-dataset": self.weights_slug}
        problems = [
            f"--{flag} {value!r}: a Kaggle slug is lowercase letters, digits and hyphens"
            for flag, value in {**slugs, "competition": self.competition}.items()
            if not SLUG_RULE.match(value)
        ]
        if self.user is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.user):
            problems.append(f"--kaggle-user {self.user!r}: not a Kaggle user name")
        return problems

    def _title_problems(self) -> list[str]:
        low, high = DATASET_TITLE_CHARS
        dataset, kernel = self.dataset_title, self.kernel_title
        problems = []
        if not low <= len(dataset) <= high:
            problems.append(f"dataset title {dataset!r} (from --weights-dataset) has {len(dataset)} "
                            f"characters; Kaggle needs {low} to {high}")  # fmt: skip
        if len(kernel) < KERNEL_TITLE_MIN_CHARS:
            problems.append(f"kernel title {kernel!r} (from --kernel-slug) has {len(kernel)} characters; "
                            "Kaggle needs more than 5")  # fmt: skip
        return problems


@dataclass(frozen=True, kw_only=True)
class KernelDefaults:
    """Kernel options baked into the script's default arguments (None: the kernel's own default); a flag
    given to the script still overrides them."""

    budget_s: float | None = None
    batch_size: int | None = None
    push_sample: int | None = None
    final_format: str | None = None
    allow_recipe_mismatch: bool = False  # the build's own override, kept by the kernel's start-up check

    def args(self) -> list[str]:
        """The baked flags, in a fixed order (the same defaults give the same bytes)."""
        flags = {
            "--budget-s": self.budget_s,
            "--batch-size": self.batch_size,
            "--push-sample": self.push_sample,
            "--final-format": self.final_format,
        }
        baked = [text for flag, value in flags.items() if value is not None for text in (flag, str(value))]
        return baked + (["--allow-recipe-mismatch"] if self.allow_recipe_mismatch else [])

    def check(self) -> None:
        """BuildError naming every value the kernel would refuse."""
        problems = []
        if self.budget_s is not None and not (0 < self.budget_s < float("inf")):
            problems.append(f"--budget-s {self.budget_s}: a finite number of seconds > 0")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size {self.batch_size}: at least 1")
        if self.push_sample is not None and self.push_sample < 0:
            problems.append(f"--push-sample {self.push_sample}: a whole number >= 0")
        if self.final_format is not None and self.final_format not in FINAL_FORMATS:
            problems.append(f"--final-format {self.final_format!r}: one of {', '.join(FINAL_FORMATS)}")
        if problems:
            raise BuildError("kernel defaults: " + "; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What `build` wrote and from what."""

    script: Path
    kernel_metadata: Path | None
    dataset_metadata: Path | None
    files: tuple[str, ...]
    size: int
    sha256: str
    manifest: Manifest
    rules: Rules
    ids: KaggleIds = KaggleIds()
    defaults: KernelDefaults = KernelDefaults()
    warnings: tuple[str, ...] = ()
    recipe: str = ""


def package_files(package_dir: Path, prefix: str, parts: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Every file under `package_dir` (only under its top-level entries `parts`, when given) as
    `{prefix/relative posix path: bytes}`, without caches and dotfiles.

    Raises BuildError on a compiled extension: the kernel can only carry pure python.
    """
    files = {}
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if parts is not None and rel.parts[0] not in parts:
            continue
        if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        if path.name.endswith(COMPILED_SUFFIXES) or ".so." in path.name:
            raise BuildError(f"{path}: compiled extension; only pure-python packages can be bundled")
        files[f"{prefix}/{rel.as_posix()}"] = path.read_bytes()
    return files


def vendored_files(name: str) -> dict[str, bytes]:
    """The installed package `name` (import name) plus its distribution's license file(s) inside it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"{name}: not installed as a package in this environment; cannot vendor it")
    files = package_files(Path(next(iter(spec.submodule_search_locations))), name)
    licenses = _license_files(name)
    if not licenses:
        raise BuildError(f"{name}: no LICENSE file in its installed dist-info; not vendoring it unlicensed")
    for path in licenses:
        files[f"{name}/{path.name}"] = path.read_bytes()
    return files


def _license_files(name: str) -> list[Path]:
    dist = _distribution(name)
    entries = [] if dist is None else dist.files or ()
    return sorted(
        Path(dist.locate_file(e))
        for e in entries
        if ".dist-info" in str(e) and e.name.upper().startswith(LICENSE_PREFIXES)
    )


@functools.cache
def _distribution(name: str) -> importlib.metadata.Distribution | None:
    """The installed distribution providing the import package `name` (top_level.txt, else its name)."""
    wanted = name.replace("_", "-").lower()
    for dist in importlib.metadata.distributions():
        tops = (dist.read_text("top_level.txt") or "").split()
        if name in tops or (dist.metadata["Name"] or "").replace("_", "-").lower() == wanted:
            return dist
    return None


def bundled_files(vendored: tuple[str, ...] = VENDORED) -> dict[str, bytes]:
    """`steel_seg`'s kernel parts (the running package's source) and the vendored packages, keyed by path,
    sorted."""
    files = package_files(Path(steel_seg.__file__).parent, "steel_seg", KERNEL_PARTS)
    for name in vendored:
        files.update(vendored_files(name))
    return dict(sorted(files.items()))


def encode(data: bytes) -> str:
    """gzip (level 9, mtime 0: deterministic) then base64, as one ASCII string."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")


def decode(blob: str) -> bytes:
    """The inverse of `encode` (the bootstrap template does the same with the stdlib)."""
    return gzip.decompress(base64.b64decode(blob))


def load_inputs(weights_dir: Path) -> tuple[Manifest, Rules]:
    """Read and check `manifest.json` and `thresholds.json`; every listed model dir must exist, match its
    sha256 and load as the kernel will load it."""
    manifest_path, rules_path = weights_dir / MANIFEST_FILE, weights_dir / THRESHOLDS_FILE
    hints = {
        manifest_path: "weights manifest not found (write it with `steel-seg manifest --weights-dir DIR "
        "--model NAME=runs/<run>/best ...`)",
        rules_path: "post-processing rules not found (write them with `steel-seg tune --out`)",
    }
    for path, hint in hints.items():
        if not path.is_file():
            raise BuildError(f"{path}: {hint}")
    manifest = Manifest.load(manifest_path)
    rules = Rules.load(rules_path)
    for entry in manifest.models:
        if not (weights_dir / entry.dir).is_dir():
            raise BuildError(
                f"{weights_dir / entry.dir}: model dir of {entry.name!r} (listed in "
                f"{manifest_path}) is missing"
            )
        load_model(check_model_dir(weights_dir, entry), entry.name, entry.role)
    return manifest, rules


def check_recipe(manifest: Manifest, rules: Rules, allow_mismatch: bool = False) -> str:
    """What the rules were tuned on against what the manifest ships (`models.recipe.check_tuned`): a line to
    show, or BuildError listing every difference unless `allow_mismatch`."""
    problems, line = check_tuned(manifest, rules.tuning)
    if problems and not allow_mismatch:
        listed = "\n".join(f"  {p}" for p in problems)
        raise BuildError(
            f"the rules were tuned on another ensemble than the manifest ships:\n{listed}\nrun steel-seg oof "
            "--weights-dir and steel-seg tune on this manifest (or pass --allow-recipe-mismatch)"
        )
    return "; ".join(problems) if problems else line


def embedded_rules(rules: Rules) -> dict:
    """The rules as the kernel carries them: the class rules, and of the tuning record only the recipe (the
    kernel checks it at start-up)."""
    recipe = (rules.tuning or {}).get("recipe")
    return Rules(rules.classes, rules.one_class_per_pixel, {"recipe": recipe} if recipe else None).to_dict()


def render(
    template: str,
    files: dict[str, bytes],
    manifest: Manifest,
    rules: Rules,
    ids: KaggleIds,
    baked: KernelDefaults = KernelDefaults(),
) -> str:
    """The kernel script: `template` with the encoded files, the manifest, the rules, the Kaggle slugs and
    the baked kernel options."""
    blobs = {path: encode(data) for path, data in sorted(files.items())}
    bundle_id = hashlib.sha256(json.dumps(blobs, sort_keys=True).encode()).hexdigest()[:16]
    rules_dict = embedded_rules(rules)
    defaults = ["--competition", ids.competition, "--weights-dataset", ids.weights_slug, *baked.args()]
    try:
        return string.Template(template).substitute(
            header=_header(files, manifest, rules),
            bundle_id=bundle_id,
            default_args=repr(defaults),
            manifest=repr(_canonical(manifest.to_dict())),
            rules=repr(_canonical(rules_dict)),
            sources="\n".join(f"    {path!r}: {blob!r}," for path, blob in blobs.items()),
        )
    except (KeyError, ValueError) as exc:
        raise BuildError(f"kernel template: bad placeholder {exc}") from exc


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _header(files: dict[str, bytes], manifest: Manifest, rules: Rules) -> str:
    tops = sorted({path.split("/")[0] for path in files})
    lines = [f"Bundled: {', '.join(f'{t} {_version(t)}' for t in tops)} ({len(files)} files)."]
    lines += [
        f"Model {m.name}: role {m.role}, dir {m.dir}, views {'/'.join(m.tta)}, weight {m.weight:g}"
        for m in manifest.models
    ]
    lines += [
        f"Class {c.class_id}: pixel > {c.pixel_threshold:g}, component >= {c.min_component}, "
        f"area >= {c.min_area}, gate >= {c.gate:g}, seg_gate >= {c.seg_gate:g}"
        for c in rules.classes
    ]
    return "\n".join(lines)


def _version(top: str) -> str:
    if top == "steel_seg":
        return steel_seg.__version__
    dist = _distribution(top)
    return "?" if dist is None else dist.version


def kernel_metadata(ids: KaggleIds) -> dict:
    """`kernel-metadata.json` for `kaggle kernels push -p kernel`: private GPU script on `ids.machine_shape`
    (left to chance, Kaggle's default GPU was a P100 that today's torch cannot run), internet off."""
    return {
        "id": f"{ids.user}/{ids.kernel_slug}",
        "title": ids.kernel_title,
        "code_file": SCRIPT_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "machine_shape": ids.machine_shape,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [f"{ids.user}/{ids.weights_slug}"],
        "competition_sources": [ids.competition],
        "kernel_sources": [],
        "model_sources": [],
    }


def dataset_metadata(ids: KaggleIds) -> dict:
    """`dataset-metadata.json` for `kaggle datasets create -p weights --dir-mode zip`."""
    return {
        "title": ids.dataset_title,
        "id": f"{ids.user}/{ids.weights_slug}",
        "licenses": [{"name": ids.license}],
    }


def build(
    weights_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    template: str | os.PathLike,
    ids: KaggleIds = KaggleIds(),
    vendored: tuple[str, ...] = VENDORED,
    defaults: KernelDefaults = KernelDefaults(),
) -> BuildResult:
    """Check the ids, defaults and inputs; write `out_dir/kernel.py` and (with `ids.user`) Kaggle's metadata.

    Raises:
        BuildError (or ManifestError): before anything is written, also when the rules were tuned on another
        ensemble than the manifest ships (`check_recipe`) unless `defaults.allow_recipe_mismatch`.
    """
    warnings = ids.check()
    defaults.check()
    weights_dir, out_dir, template = Path(weights_dir), Path(out_dir), Path(template)
    if not template.is_file():
        raise BuildError(f"{template}: kernel template not found")
    manifest, rules = load_inputs(weights_dir)
    recipe = check_recipe(manifest, rules, defaults.allow_recipe_mismatch)
    files = bundled_files(vendored)
    script = render(template.read_text(), files, manifest, rules, ids, defaults).encode()
    script_path = fileio.write_bytes(out_dir / SCRIPT_FILE, script)
    kernel_meta = dataset_meta = None
    if ids.user:
        kernel_meta = fileio.write_bytes(out_dir / KERNEL_METADATA_FILE, _json_bytes(kernel_metadata(ids)))
        dataset_meta = fileio.write_bytes(
            weights_dir / DATASET_METADATA_FILE, _json_bytes(dataset_metadata(ids))
        )
    return BuildResult(
        script=script_path,
        kernel_metadata=kernel_meta,
        dataset_metadata=dataset_meta,
        files=tuple(files),
        size=len(script),
        sha256=hashlib.sha256(script).hexdigest(),
        manifest=manifest,
        rules=rules,
        ids=ids,
        defaults=defaults,
        warnings=tuple(warnings),
        recipe=recipe,
    )


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def summary(result: BuildResult) -> str:
    """What was built, for the console: size, models, thresholds, budget and the next commands."""
    lines = [
        f"{shown(result.script)}: {result.size / 1e6:.2f} MB, {len(result.files)} bundled files, "
        f"sha256 {result.sha256[:16]}"
    ]
    lines += [
        f"  model {m.name:<20} role {m.role:<3}  views {'/'.join(m.tta):<10} weight {m.weight:g}"
        for m in result.manifest.models
    ]
    lines += [
        f"  class {c.class_id}: pixel > {c.pixel_threshold:g}  component >= {c.min_component}  "
        f"area >= {c.min_area}  gate >= {c.gate:g}  seg_gate >= {c.seg_gate:g}"
        for c in result.rules.classes
    ]
    lines.append(f"  one class per pixel: {result.rules.one_class_per_pixel}")
    drop = ", ".join(result.manifest.drop_order) or "nothing"
    lines.append(f"  budget {result.manifest.budget_s:g} s; when short, drop in order: {drop}")
    lines += [f"  recipe: {result.recipe}"] if result.recipe else []
    baked = result.defaults.args()
    if baked:
        lines.append(f"  baked into the script (Kaggle runs it without a command line): {' '.join(baked)}")
    lines += [f"  warning: {w}" for w in result.warnings]
    if result.kernel_metadata is None:
        lines.append("  no Kaggle metadata written: pass --kaggle-user USER to write it")
        return "\n".join(lines)
    ids, weights = result.ids, shown(result.dataset_metadata.parent)
    lines.append(f"  upload weights:  kaggle datasets create -p {weights} --dir-mode zip")
    lines.append(f"  new weights:     {dataset_version_command(result.dataset_metadata.parent)}")
    lines.append(f"  push kernel:     {push_command(result.script.parent, ids.machine_shape)}")
    lines.append(f"  when it has run: {submit_command(ids)}")
    lines.append(
        "  (Kaggle then re-runs version N on the hidden test set; that run's file is the one scored)"
    )
    return "\n".join(lines)


def shown(path: Path) -> str:
    """`path` for a printed command: relative to the current folder when under it, shell-quoted."""
    path = Path(path)
    with contextlib.suppress(ValueError):  # not under the current folder: as given
        path = path.resolve().relative_to(Path.cwd().resolve())
    return shlex.quote(str(path))


def dataset_version_command(weights_dir: Path) -> str:
    """`kaggle datasets version`: a new version of the weights dataset (the CLI requires a message)."""
    return f"kaggle datasets version -p {shown(weights_dir)} --dir-mode zip -m {shlex.quote('new weights')}"


def push_command(kernel_dir: Path, machine_shape: str, cli_version: str | None = None) -> str:
    """`kaggle kernels push`, with `--accelerator` unless the installed Kaggle CLI predates that flag.

    `cli_version` defaults to the installed `kaggle` package's (none installed: the flag is given, as any
    CLI installed today has it). Public kernels needed both the flag and `machine_shape` to get a T4.
    """
    command = f"kaggle kernels push -p {shown(kernel_dir)}"
    version = cli_version if cli_version is not None else _installed_version("kaggle")
    numbers = tuple(int(n) for n in re.findall(r"\d+", version or "")[:3])
    if version is not None and numbers < ACCELERATOR_FLAG_SINCE:
        since = ".".join(map(str, ACCELERATOR_FLAG_SINCE))
        return f"{command}   (Kaggle CLI {version} has no --accelerator; >= {since} adds it)"
    return f"{command} --accelerator {machine_shape}"


def submit_command(ids: KaggleIds) -> str:
    """The late submission of the kernel's output (N: the kernel version that wrote it; the CLI requires
    a message)."""
    message = shlex.quote(f"{ids.kernel_slug} version N")
    return (
        f"kaggle competitions submit -c {ids.competition} -k {ids.user}/{ids.kernel_slug} "
        f"-f {SUBMISSION} -v N -m {message}"
    )


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
