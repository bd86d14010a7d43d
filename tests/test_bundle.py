"""The kernel builder: inputs checked, files collected and encoded, one deterministic script plus metadata."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest
import torch

import steel_seg
from steel_seg import bundle
from steel_seg.models import factory
from steel_seg.models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    Provenance,
    sha256_file,
    write_manifest,
)
from steel_seg.models.recipe import Recipe
from steel_seg.postprocess.rules import ClassRule, Rules

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"
TINY = factory.ModelSpec(
    arch="Unet", encoder="tu-mobilenetv3_small_050", encoder_depth=3, decoder_channels=(8, 8, 8)
)


def make_weights(weights_dir: Path) -> Path:
    """A real tiny smp model dir, its manifest and a thresholds.json, as `steel-seg tune` would leave them."""
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY), TINY, weights_dir / "tiny")
    write_manifest(weights_dir, ["tiny"], tta=("none", "h"))
    classes = tuple(ClassRule(k, 0.6, 10 * k, 100 * k, 0.1) for k in range(1, 5))
    rules = Rules(classes, tuning={"grid": [1, 2]})
    rules.save(weights_dir / bundle.THRESHOLDS_FILE)
    return weights_dir


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights"))


IDS = bundle.KaggleIds(user="someone", weights_slug="my-weights")


def test_package_files_skips_caches_and_keeps_data(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "stats.json").write_text("{}")
    (pkg / "sub" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (pkg / "old.pyc").write_bytes(b"\0")
    (pkg / ".hidden").write_text("")
    assert bundle.package_files(pkg, "pkg") == {"pkg/__init__.py": b"x = 1\n", "pkg/sub/stats.json": b"{}"}


def test_package_files_refuses_compiled_extensions(tmp_path):
    (tmp_path / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    with pytest.raises(bundle.BuildError, match=r"fast\.cpython.*compiled extension"):
        bundle.package_files(tmp_path, "pkg")


def test_vendored_smp_is_complete_with_its_license():
    import segmentation_models_pytorch as smp

    files = bundle.vendored_files("segmentation_models_pytorch")
    source = Path(smp.__file__).parent
    expected = {
        f"segmentation_models_pytorch/{p.relative_to(source).as_posix()}"
        for p in source.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected <= set(files)
    assert b"MIT License" in files["segmentation_models_pytorch/LICENSE"]


def test_vendoring_a_compiled_package_fails_clearly():
    with pytest.raises(bundle.BuildError, match="safetensors.*compiled extension"):
        bundle.vendored_files("safetensors")
    with pytest.raises(bundle.BuildError, match="no_such_package_xyz: not installed"):
        bundle.vendored_files("no_such_package_xyz")


def test_encode_is_deterministic_and_reversible():
    data = bytes(range(256)) * 50
    assert bundle.encode(data) == bundle.encode(data)
    assert bundle.decode(bundle.encode(data)) == data


def test_build_writes_one_script_and_kaggle_metadata(weights, tmp_path):
    result = bundle.build(weights, tmp_path / "kernel", TEMPLATE, IDS)
    assert result.script == tmp_path / "kernel" / "kernel.py"
    kernel_meta = json.loads(result.kernel_metadata.read_text())
    assert kernel_meta["id"] == "someone/steel-seg-kernel"
    assert kernel_meta["code_file"] == "kernel.py" and kernel_meta["kernel_type"] == "script"
    assert kernel_meta["enable_gpu"] is True and kernel_meta["enable_internet"] is False
    assert kernel_meta["machine_shape"] == "NvidiaTeslaT4"  # left to chance it was a P100 torch cannot run
    assert kernel_meta["title"] == "steel seg kernel"
    assert kernel_meta["is_private"] is True
    assert kernel_meta["dataset_sources"] == ["someone/my-weights"]
    assert kernel_meta["competition_sources"] == ["severstal-steel-defect-detection"]
    dataset_meta = json.loads((weights / "dataset-metadata.json").read_text())
    assert dataset_meta["id"] == "someone/my-weights" and dataset_meta["licenses"] == [{"name": "CC0-1.0"}]
    text = bundle.summary(result)
    assert "tiny" in text and "none/h" in text and "class 4: pixel > 0.6" in text and "budget 3300" in text
    submit = "kaggle competitions submit -c severstal-steel-defect-detection -k someone/steel-seg-kernel"
    assert f"{submit} -f submission.csv -v N" in text and "warning" not in text


def test_script_carries_the_package_manifest_and_rules(weights, tmp_path):
    result = bundle.build(weights, tmp_path, TEMPLATE, IDS)
    namespace = runpy.run_path(str(result.script), run_name="not_main")
    sources = {path: bundle.decode(blob) for path, blob in namespace["SOURCES"].items()}
    assert sources == bundle.bundled_files()
    assert list(sources) == sorted(sources)
    shipped = {path.split("/")[1] for path in sources if path.startswith("steel_seg/")}
    assert shipped == set(bundle.KERNEL_PARTS)  # no train/, report/, cli/, workflow/, synthetic/, bundle.py
    package = Path(steel_seg.__file__).parent
    assert sources["steel_seg/kernel.py"] == (package / "kernel.py").read_bytes()
    assert namespace["MANIFEST"]["models"][0]["sha256"] == result.manifest.models[0].sha256
    assert Rules.from_dict(namespace["RULES"]) == Rules.load(weights / "thresholds.json")
    assert "tuning" not in namespace["RULES"]
    assert namespace["DEFAULT_ARGS"] == [
        "--competition",
        "severstal-steel-defect-detection",
        "--weights-dataset",
        "my-weights",
    ]


def test_build_is_byte_identical(weights, tmp_path):
    first = bundle.build(weights, tmp_path / "a", TEMPLATE, IDS)
    second = bundle.build(weights, tmp_path / "b", TEMPLATE, IDS)
    assert first.script.read_bytes() == second.script.read_bytes()
    assert first.kernel_metadata.read_bytes() == second.kernel_metadata.read_bytes()
    assert first.sha256 == second.sha256


def test_without_a_user_only_the_script_is_built(tmp_path):
    weights = make_weights(tmp_path / "w")
    result = bundle.build(weights, tmp_path / "k", TEMPLATE, bundle.KaggleIds())
    assert result.kernel_metadata is None and not (tmp_path / "k" / "kernel-metadata.json").exists()
    assert not (weights / "dataset-metadata.json").exists()
    assert "--kaggle-user" in bundle.summary(result)


@pytest.mark.parametrize("missing", ["manifest.json", "thresholds.json"])
def test_missing_inputs_are_named(tmp_path, missing):
    weights = make_weights(tmp_path / "w")
    (weights / missing).unlink()
    with pytest.raises(bundle.BuildError, match=rf"{missing}: .* not found"):
        bundle.build(weights, tmp_path / "k", TEMPLATE, IDS)
    assert not (tmp_path / "k" / "kernel.py").exists()


def test_missing_model_dir_is_named(tmp_path):
    weights = make_weights(tmp_path / "w")
    (weights / "tiny" / "model.safetensors").unlink()
    (weights / "tiny" / "spec.json").unlink()
    (weights / "tiny").rmdir()
    with pytest.raises(bundle.BuildError, match=r"tiny: model dir of 'tiny' .* is missing"):
        bundle.build(weights, tmp_path / "k", TEMPLATE, IDS)


def test_weights_that_do_not_match_the_manifest_fail_the_build(tmp_path):
    weights = make_weights(tmp_path / "w")
    path = weights / "tiny" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ManifestError, match=r"model\.safetensors: sha256 .* does not match"):
        bundle.build(weights, tmp_path / "k", TEMPLATE, IDS)


def test_bad_template_placeholder_is_reported(weights, tmp_path):
    template = tmp_path / "t.tmpl"
    template.write_text("x = $unknown_placeholder\n")
    with pytest.raises(bundle.BuildError, match="unknown_placeholder"):
        bundle.build(weights, tmp_path / "k", template, IDS)


def test_build_kernel_entry_point(weights, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "build_kernel.py"), run_name="build_kernel")["main"]
    assert main(["--weights-dir", str(weights), "--out", str(tmp_path), "--kaggle-user", "u"]) == 0
    out = capsys.readouterr().out
    assert "kernel.py" in out and "kaggle kernels push" in out and "kaggle competitions submit" in out
    assert main(["--weights-dir", str(weights), "--out", str(tmp_path), "--machine-shape", "Gpu9000"]) == 2
    assert "--machine-shape 'Gpu9000': not a Kaggle GPU" in capsys.readouterr().err
    assert main(["--weights-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "manifest.json: weights manifest not found" in capsys.readouterr().err


def test_weights_that_cannot_load_fail_the_build(weights, tmp_path):
    """A truncated safetensors whose manifest sha256 was recomputed: the kernel could not load it, so the
    build refuses it before anything is uploaded."""
    broken = tmp_path / "weights"
    shutil.copytree(weights, broken)
    path = broken / "tiny" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["models"][0]["sha256"] = sha256_file(path)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"model 'tiny'.*cannot read weights"):
        bundle.build(broken, tmp_path / "kernel", TEMPLATE, IDS)
    assert not (tmp_path / "kernel" / "kernel.py").exists()


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (bundle.KaggleIds("u", kernel_slug="Steel_Kernel"), "--kernel-slug 'Steel_Kernel': a Kaggle slug is"),
        (
            bundle.KaggleIds("u", weights_slug="my weights"),
            "--weights-dataset 'my weights': a Kaggle slug is",
        ),
        (
            bundle.KaggleIds("u", weights_slug="w-1"),
            "dataset title 'w 1' .* has 3 characters; Kaggle needs 6 to 50",
        ),
        (bundle.KaggleIds("u", weights_slug="w" * 51), "has 51 characters; Kaggle needs 6 to 50"),
        (
            bundle.KaggleIds("u", kernel_slug="k-1"),
            "kernel title 'k 1' .* has 3 characters; Kaggle needs more than 5",
        ),
        (bundle.KaggleIds("u/x"), "--kaggle-user 'u/x': not a Kaggle user name"),
        (
            bundle.KaggleIds("u", machine_shape="TpuV38"),
            "--machine-shape 'TpuV38': not a Kaggle GPU; use one of",
        ),
    ],
)
def test_bad_slugs_titles_and_shapes_stop_the_build_before_anything_is_written(
    weights, tmp_path, ids, message
):
    with pytest.raises(bundle.BuildError, match=message):
        bundle.build(weights, tmp_path / "k", TEMPLATE, ids)
    assert not (tmp_path / "k").exists()


def test_every_problem_is_named_at_once():
    with pytest.raises(bundle.BuildError) as error:
        bundle.KaggleIds("u", kernel_slug="K", weights_slug="W").check()
    assert len(str(error.value).splitlines()) == 4  # two slugs, two titles


def test_another_machine_shape_and_a_retired_one(weights, tmp_path):
    ids = bundle.KaggleIds("someone", machine_shape="NvidiaL4")
    result = bundle.build(weights, tmp_path / "a", TEMPLATE, ids)
    assert json.loads(result.kernel_metadata.read_text())["machine_shape"] == "NvidiaL4"
    retired = bundle.build(
        weights, tmp_path / "b", TEMPLATE, bundle.KaggleIds("someone", machine_shape="NvidiaTeslaP100")
    )
    assert json.loads(retired.kernel_metadata.read_text())["machine_shape"] == "NvidiaTeslaP100"
    assert "warning: --machine-shape NvidiaTeslaP100 is retired" in bundle.summary(retired)
    assert "Use NvidiaTeslaT4" in retired.warnings[0]


def test_the_push_command_asks_for_the_accelerator_where_the_cli_can():
    kernel = Path("kernel")
    assert (
        bundle.push_command(kernel, "NvidiaTeslaT4", "2.2.5")
        == "kaggle kernels push -p kernel --accelerator NvidiaTeslaT4"
    )
    assert bundle.push_command(kernel, "NvidiaTeslaT4", "1.8.4").endswith("--accelerator NvidiaTeslaT4")
    old = bundle.push_command(kernel, "NvidiaTeslaT4", "1.7.4.5")
    assert (
        old.startswith("kaggle kernels push -p kernel   (")
        and "1.7.4.5 has no --accelerator; >= 1.8.4" in old
    )


def fold_weights(root: Path, folds: tuple[int, ...], weight: float = 1.0) -> Path:
    """A weights dir of one config's tiny models for `folds`, each with its provenance (as `steel-seg
    manifest` writes it from training runs)."""
    names = []
    for k in folds:
        torch.manual_seed(k)
        factory.save(factory.build_model(TINY), TINY, root / f"unet-f{k}")
        names.append(f"unet-f{k}")
    provenance = {
        n: Provenance(
            run=f"runs/{n}",
            fold=k,
            folds_sha256="a" * 64,
            config_sha256="c" * 64,
            arch="Unet",
            encoder=TINY.encoder,
            classes=4,
        )  # fmt: skip
        for n, k in zip(names, folds, strict=True)
    }
    weights = [weight] * len(names)
    write_manifest(root, names, tta=("none", "h"), weights=weights, provenance=provenance)
    return root


def tuned_on(weights_dir: Path, rules_dir: Path) -> None:
    """thresholds.json in `rules_dir`, tuned (so says its record) on the ensemble of `weights_dir`."""
    recipe = Recipe.of(Manifest.load(weights_dir / MANIFEST_FILE))
    Rules(tuning={"recipe": recipe.to_dict()}).save(rules_dir / bundle.THRESHOLDS_FILE)


def test_a_subset_of_the_tuned_folds_builds_and_says_which(tmp_path):
    tuned_on(fold_weights(tmp_path / "all", (0, 1, 2)), (fold0 := fold_weights(tmp_path / "f0", (0,))))
    result = bundle.build(fold0, tmp_path / "kernel", TEMPLATE)
    assert result.recipe.endswith("folds [0, 1, 2]; this manifest ships folds [0]")
    assert "recipe: the rules were tuned on" in bundle.summary(result)
    namespace = runpy.run_path(str(result.script), run_name="not_main")
    tuned = Recipe.of(Manifest.load(tmp_path / "all" / MANIFEST_FILE))
    assert namespace["RULES"]["tuning"] == {"recipe": tuned.to_dict()}  # the kernel checks it at start-up
    assert "--allow-recipe-mismatch" not in namespace["DEFAULT_ARGS"]


def test_rules_tuned_on_another_ensemble_are_refused_unless_allowed(tmp_path):
    tuned_on(fold_weights(tmp_path / "tuned", (0, 1)), (shipped := fold_weights(tmp_path / "w", (0,), 2.0)))
    expected = (
        "tuned on another ensemble than the manifest ships:\n  member unet: weight 2, views none\\+h shipped"
    )
    with pytest.raises(bundle.BuildError, match=expected):
        bundle.build(shipped, tmp_path / "kernel", TEMPLATE)
    assert not (tmp_path / "kernel").exists()
    result = bundle.build(
        shipped, tmp_path / "kernel", TEMPLATE, defaults=bundle.KernelDefaults(allow_recipe_mismatch=True)
    )
    assert result.recipe.startswith("member unet: weight 2")
    assert "--allow-recipe-mismatch" in runpy.run_path(str(result.script), run_name="x")["DEFAULT_ARGS"]


def test_kernel_options_are_baked_into_the_script(weights, tmp_path):
    """Kaggle runs the script with no command line: the options a user sets at build time are its defaults."""
    from steel_seg import kernel

    baked = bundle.KernelDefaults(budget_s=1800.0, batch_size=4, push_sample=50, final_format="pairs")
    first = bundle.build(weights, tmp_path / "a", TEMPLATE, IDS, defaults=baked)
    second = bundle.build(weights, tmp_path / "b", TEMPLATE, IDS, defaults=baked)
    assert first.script.read_bytes() == second.script.read_bytes()  # the same inputs, the same bytes
    default_args = runpy.run_path(str(first.script), run_name="not_main")["DEFAULT_ARGS"]
    assert default_args[4:] == ["--budget-s", "1800.0", "--batch-size", "4", "--push-sample", "50",
                                "--final-format", "pairs"]  # fmt: skip
    args = kernel.parse_args(default_args)
    assert (args.budget_s, args.batch_size, args.push_sample, args.final_format) == (1800.0, 4, 50, "pairs")
    assert kernel.parse_args([*default_args, "--batch-size", "2"]).batch_size == 2  # a flag still wins
    assert "baked into the script (Kaggle runs it without a command line): --budget-s 1800.0" in (
        bundle.summary(first)
    )
    plain = bundle.build(weights, tmp_path / "c", TEMPLATE, IDS)
    assert len(runpy.run_path(str(plain.script), run_name="not_main")["DEFAULT_ARGS"]) == 4
    assert "baked into" not in bundle.summary(plain)


def test_kernel_options_the_kernel_would_refuse_stop_the_build(weights, tmp_path):
    bad = bundle.KernelDefaults(budget_s=0.0, batch_size=0, final_format="rows")
    with pytest.raises(
        bundle.BuildError, match=r"--budget-s 0.0: .*; --batch-size 0: .*; --final-format 'rows'"
    ):
        bundle.build(weights, tmp_path / "k", TEMPLATE, IDS, defaults=bad)
    assert not (tmp_path / "k").exists()


def test_printed_commands_are_relative_and_quoted(weights, tmp_path, monkeypatch):
    """They carried the absolute paths of the machine that built the kernel, unquoted."""
    monkeypatch.chdir(tmp_path)
    spaced = tmp_path / "my weights"
    shutil.copytree(weights, spaced)
    text = bundle.summary(bundle.build(spaced, tmp_path / "kernel", TEMPLATE, IDS))
    assert "kaggle datasets create -p 'my weights' --dir-mode zip" in text
    assert "kaggle datasets version -p 'my weights' --dir-mode zip -m 'new weights'" in text
    assert "kaggle kernels push -p kernel --accelerator NvidiaTeslaT4" in text
    assert text.startswith("kernel/kernel.py: ") and str(tmp_path) not in text
