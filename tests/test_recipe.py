"""steel_seg.models.recipe: an ensemble's recipe from its manifest, and every way rules tuned on one
recipe can meet another (a member added, dropped or re-weighted, other views, another folds.csv, other
weights, a gate source the ensemble cannot give), while a subset of the tuned folds' models passes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from steel_seg.models.manifest import Manifest, ManifestError, ModelEntry, Provenance
from steel_seg.models.recipe import Recipe, check_tuned

FOLDS = "a" * 64


def entry(name: str, fold: int, config: str = "unet", role: str = "seg", **fields) -> ModelEntry:
    """A manifest entry with provenance; `fields` (weight, tta, sha256, folds) replace the defaults."""
    provenance = Provenance(
        run=f"runs/{name}",
        fold=fold,
        folds_sha256=fields.pop("folds", FOLDS),
        config_sha256=config * 8,
        arch="Classifier" if role == "cls" else "Unet",
        encoder="resnet34",
        classes=4,
    )
    defaults = {
        "sha256": f"{name}-weights".ljust(64, "0"),
        "tta": ("none", "h") if role == "seg" else ("none",),
    }
    return ModelEntry(name=name, role=role, dir=name, provenance=provenance, **(defaults | fields))


def ensemble(*folds: int, **changes) -> Manifest:
    """Unet + FPN + a classifier on each of `folds`; `changes` replace fields of every FPN entry."""
    models = []
    for k in folds:
        models += [entry(f"unet-f{k}", k), entry(f"cls-f{k}", k, config="clsf", role="cls")]
        models.append(dataclasses.replace(entry(f"fpn-f{k}", k, config="fpnn"), **changes))
    return Manifest(models=tuple(models))


def tuned(*folds: int) -> dict:
    return {"recipe": Recipe.of(ensemble(*folds)).to_dict()}


def test_the_recipe_groups_one_config_across_folds():
    recipe = Recipe.of(ensemble(0, 1, 2))
    assert [m.name for m in recipe.members] == ["cls", "fpn", "unet"]
    assert recipe.folds == [0, 1, 2] and recipe.image_score == "classifier"
    assert recipe.runs["unet"] == {k: f"unet-f{k}-weights".ljust(64, "0") for k in range(3)}
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_a_model_without_provenance_has_no_recipe():
    bare = dataclasses.replace(entry("x", 0), provenance=None)
    with pytest.raises(ManifestError, match="x: no provenance .* no out-of-fold predictions"):
        Recipe.of(Manifest(models=(bare,)))


def test_models_of_two_folds_files_are_refused_naming_both():
    manifest = Manifest(models=(entry("unet-f0", 0), entry("unet-f1", 1, folds="b" * 64)))
    files = "2 different folds.csv files: aaaaaaaaaaaa...: unet-f0; bbbbbbbbbbbb...: unet-f1"
    with pytest.raises(ManifestError, match=files):
        Recipe.of(manifest)


def test_a_fold_without_every_member_is_refused():
    models = ensemble(0, 1).models
    with pytest.raises(ManifestError, match=r"fpn has no model of fold\(s\) \[1\]"):
        Recipe.of(Manifest(models=tuple(m for m in models if m.name != "fpn-f1")))
    with pytest.raises(ManifestError, match="one config across folds must have one weight"):
        Recipe.of(Manifest(models=(entry("unet-f0", 0), entry("unet-f1", 1, weight=2.0))))


def test_a_subset_of_the_tuned_folds_ships_with_a_line_saying_which():
    problems, line = check_tuned(ensemble(0), tuned(0, 1, 2))
    assert problems == [] and "folds [0, 1, 2]; this manifest ships folds [0]" in line


def without(manifest: Manifest, name: str) -> Manifest:
    return Manifest(models=tuple(m for m in manifest.models if m.name != name))


@pytest.mark.parametrize(
    ("shipped", "expected"),
    [
        (without(ensemble(0), "fpn-f0"), "member fpn .* only tuned"),
        (ensemble(0, weight=2.0), "member fpn: weight 2, views none\\+h shipped vs weight 1"),
        (ensemble(0, tta=("none", "h", "v")), "views none\\+h\\+v shipped vs weight 1, views none\\+h tuned"),
        (ensemble(0, sha256="f" * 64), "member fpn fold 0: weights ffffffffffff... shipped"),
        (Manifest(models=(*ensemble(0).models, entry("deep-f0", 0, "deep"))), "member deep .* only shipped"),
    ],
    ids=["dropped", "re-weighted", "other views", "other weights", "added"],
)
def test_another_recipe_is_named(shipped, expected):
    problems, _ = check_tuned(shipped, tuned(0, 1))
    assert any(re.search(expected, p) for p in problems), problems


def test_a_gate_source_the_ensemble_cannot_give_and_another_folds_file():
    no_classifier = Manifest(models=tuple(m for m in ensemble(0).models if m.role == "seg"))
    problems, _ = check_tuned(no_classifier, tuned(0))
    assert "the gate was tuned on the classifier, this ensemble gives the max pixel probability" in problems
    other = Manifest(
        models=tuple(
            dataclasses.replace(m, provenance=dataclasses.replace(m.provenance, folds_sha256="c" * 64))
            for m in ensemble(0).models
        )
    )
    problems, _ = check_tuned(other, tuned(0))
    assert problems == ["folds.csv sha256 cccccccccccc... shipped vs aaaaaaaaaaaa... tuned"]


def test_rules_without_a_recipe_pass_with_a_line():
    assert check_tuned(ensemble(0), None)[0] == [] and "no recipe" in check_tuned(ensemble(0), {})[1]


def test_two_folds_recipes_merge_and_other_members_do_not():
    merged = Recipe.of(ensemble(0)).merge(Recipe.of(ensemble(1)), "oof/f1")
    assert merged == Recipe.of(ensemble(0, 1))
    with pytest.raises(ValueError, match="oof/f1: another recipe .* fold\\(s\\) \\[0\\] in both"):
        Recipe.of(ensemble(0)).merge(Recipe.of(ensemble(0)), "oof/f1")
    with pytest.raises(ValueError, match="member fpn: weight 1, views none\\+h this vs weight 3"):
        Recipe.of(ensemble(0)).merge(Recipe.of(ensemble(1, weight=3.0)), "oof/f1")
