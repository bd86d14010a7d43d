"""The recipe of an ensemble: which members, trained on which folds of which folds.csv, with which weights.

A member is one training config in one role (`Provenance.config_sha256`: the same for that config's models
of every fold) with its ensemble weight and TTA views. `steel-seg oof` records the recipe its predictions
came from, `steel-seg tune` copies it into thresholds.json, and `build_kernel.py` and the kernel's start-up
compare it with the manifest they ship (`mismatches`): rules tuned on one ensemble never ship silently with
another (a member added, dropped or re-weighted, other views, another folds.csv, other weights, a gate source
the ensemble cannot provide). Shipping a subset of the tuned folds' models of the same recipe is fine: the
models are the ones the rules were tuned on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steel_seg.models.manifest import Manifest, ManifestError, ModelEntry

FOLD_SUFFIX = re.compile(r"[-_.]?(?:fold|f)\d+$")


@dataclass(frozen=True, kw_only=True)
class Member:
    """One member of the recipe: a training config in a role, with its weight and views (fold-free)."""

    name: str
    role: str
    arch: str
    encoder: str
    classes: int
    aux_head: bool
    config_sha256: str
    weight: float
    tta: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        """What makes two folds' models the same member: their config and role."""
        return self.config_sha256, self.role

    def describe(self) -> str:
        return (
            f"{self.name} ({self.role} {self.arch}/{self.encoder}, weight {self.weight:g}, views "
            f"{'+'.join(self.tta)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tta": list(self.tta)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Member:
        return cls(**{**d, "tta": tuple(d["tta"]), "weight": float(d["weight"])})


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The members (sorted by name), the folds.csv's sha256, and each member's weights sha256 per fold."""

    members: tuple[Member, ...]
    folds_sha256: str
    runs: dict[str, dict[int, str]]

    @property
    def folds(self) -> list[int]:
        return sorted({fold for per_fold in self.runs.values() for fold in per_fold})

    @property
    def image_score(self) -> str | None:
        """What the rules' `gate` reads: "classifier", "aux head", or None (the max pixel probability)."""
        if any(m.role == "cls" for m in self.members):
            return "classifier"
        return "aux head" if any(m.aux_head for m in self.members) else None

    @classmethod
    def of(cls, manifest: Manifest) -> Recipe:
        """The recipe of a manifest whose every model came from a training run with a held-out fold.

        Raises:
            ManifestError: a model without provenance, two folds files, a member missing from a fold that the
                others have, a member with two models in one fold or other weights/views in another fold.
        """
        lost = [m.name for m in manifest.models if m.provenance is None]
        if lost:
            raise ManifestError(
                f"model(s) {', '.join(lost)}: no provenance (not taken from a training run's best/ or last/ "
                "by `steel-seg manifest`), so no held-out fold: a model trained on all data has no "
                "out-of-fold predictions and no recipe to tune on"
            )
        hashes = sorted({m.provenance.folds_sha256 for m in manifest.models})
        if len(hashes) > 1:
            raise ManifestError(
                f"the models were trained on {len(hashes)} different folds.csv files: "
                f"{_by_folds_file(manifest.models)}"
            )
        groups = list(_group(manifest.models).values())
        members = _unique_names([_member(entries) for entries in groups])
        pairs = zip(members, groups, strict=True)
        runs = {m.name: {e.provenance.fold: e.sha256 for e in entries} for m, entries in pairs}
        _check_folds(runs)
        return cls(members=tuple(sorted(members, key=lambda m: m.name)), folds_sha256=hashes[0], runs=runs)

    def fold_models(self, manifest: Manifest, fold: int) -> Manifest:
        """The manifest's models of one fold (every member once), with its drop order and budget."""
        models = tuple(m for m in manifest.models if m.provenance and m.provenance.fold == fold)
        names = {m.name for m in models}
        drop = tuple(s for s in manifest.drop_order if not s.startswith("model:") or s[6:] in names)
        return Manifest(models=models, drop_order=drop, budget_s=manifest.budget_s)

    def merge(self, other: Recipe, where: str) -> Recipe:
        """The recipe of both parts' folds (e.g. two OOF dirs); ValueError naming `where` when their members
        or folds files differ, or both hold a fold."""
        problems = self._member_problems(other, ("this", "the others"))
        if self.folds_sha256 != other.folds_sha256:
            problems.append(f"folds.csv sha256 {self.folds_sha256[:12]}... vs {other.folds_sha256[:12]}...")
        both = sorted(set(self.folds) & set(other.folds))
        if both:
            problems.append(f"fold(s) {both} in both")
        if problems:
            raise ValueError(f"{where}: another recipe than the other OOF dirs: {'; '.join(problems)}")
        theirs = other.runs_by_key()
        runs = {m.name: {**self.runs[m.name], **theirs[m.key]} for m in self.members}
        return Recipe(members=self.members, folds_sha256=self.folds_sha256, runs=runs)

    def mismatches(self, tuned: Recipe) -> list[str]:
        """What differs between this (shipped) recipe and the one the rules were `tuned` on; [] when this one
        ships a subset of the tuned folds' very models."""
        problems = self._member_problems(tuned, ("shipped", "tuned"))
        if self.folds_sha256 != tuned.folds_sha256:
            problems.append(
                f"folds.csv sha256 {self.folds_sha256[:12]}... shipped vs {tuned.folds_sha256[:12]}... tuned"
            )
        if self.image_score != tuned.image_score:
            tuned_on, given = (r.image_score or "max pixel probability" for r in (tuned, self))
            problems.append(f"the gate was tuned on the {tuned_on}, this ensemble gives the {given}")
        if problems:
            return problems
        tuned_runs = tuned.runs_by_key()
        for member in self.members:
            for fold, sha in self.runs[member.name].items():
                expected = tuned_runs[member.key].get(fold)
                if expected != sha:
                    theirs = "no model" if expected is None else f"{expected[:12]}..."
                    problems.append(
                        f"member {member.name} fold {fold}: weights {sha[:12]}... shipped, {theirs} tuned"
                    )
        return problems

    def runs_by_key(self) -> dict[tuple[str, str], dict[int, str]]:
        return {m.key: self.runs[m.name] for m in self.members}

    def _member_problems(self, other: Recipe, sides: tuple[str, str]) -> list[str]:
        mine, theirs = {m.key: m for m in self.members}, {m.key: m for m in other.members}
        problems = [f"member {mine[k].describe()} only {sides[0]}" for k in mine.keys() - theirs.keys()]
        problems += [f"member {theirs[k].describe()} only {sides[1]}" for k in theirs.keys() - mine.keys()]
        for key in sorted(mine.keys() & theirs.keys()):
            a, b = mine[key], theirs[key]
            if (a.weight, a.tta) != (b.weight, b.tta):
                problems.append(
                    f"member {a.name}: weight {a.weight:g}, views {'+'.join(a.tta)} {sides[0]} vs weight "
                    f"{b.weight:g}, views {'+'.join(b.tta)} {sides[1]}"
                )
        return sorted(problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": [m.to_dict() for m in self.members],
            "folds_sha256": self.folds_sha256,
            "runs": {name: {str(k): v for k, v in sorted(per.items())} for name, per in self.runs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """A recipe as `to_dict` wrote it; ValueError naming what is missing."""
        try:
            return cls(
                members=tuple(Member.from_dict(m) for m in d["members"]),
                folds_sha256=str(d["folds_sha256"]),
                runs={name: {int(k): str(v) for k, v in per.items()} for name, per in d["runs"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"recipe: malformed ({type(exc).__name__}: {exc})") from None


def check_tuned(manifest: Manifest, tuning: dict[str, Any] | None) -> tuple[list[str], str]:
    """Whether rules whose `tuning` record is given may ship with `manifest`: (problems, a line to log).

    Rules without a recipe (written by hand, by an older `tune`, or the committed defaults) pass with a line
    saying nothing could be compared.
    """
    if not tuning or "recipe" not in tuning:
        return [], "the rules record no recipe (untuned, or tuned by an older steel-seg): nothing to compare"
    tuned = Recipe.from_dict(tuning["recipe"])
    try:
        shipped = Recipe.of(manifest)
    except ManifestError as exc:
        return [f"the manifest cannot be compared with the tuned recipe: {exc}"], ""
    problems = shipped.mismatches(tuned)
    line = (
        f"the rules were tuned on this recipe's folds {tuned.folds}; this manifest ships folds "
        f"{shipped.folds}"
    )
    return problems, line


def _group(entries: Sequence[ModelEntry]) -> dict[tuple[str, str], list[ModelEntry]]:
    groups: dict[tuple[str, str], list[ModelEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.provenance.config_sha256, entry.role), []).append(entry)
    return groups


def _member(entries: list[ModelEntry]) -> Member:
    """The member of one config's models; ManifestError when they differ in weight or views, share a fold."""
    first = min(entries, key=lambda e: e.name)
    p = first.provenance
    folds = [e.provenance.fold for e in entries]
    if len(set(folds)) != len(folds):
        raise ManifestError(
            f"models {', '.join(e.name for e in entries)}: one config, two models of one fold"
        )
    odd = [e.name for e in entries if (e.weight, e.tta) != (first.weight, first.tta)]
    if odd:
        raise ManifestError(
            f"models {first.name} and {', '.join(odd)}: one config across folds must have one weight and "
            "one set of views"
        )
    return Member(
        name=FOLD_SUFFIX.sub("", first.name) or first.name,
        role=first.role,
        arch=p.arch,
        encoder=p.encoder,
        classes=p.classes,
        aux_head=p.aux_head,
        config_sha256=p.config_sha256,
        weight=first.weight,
        tta=first.tta,
    )


def _unique_names(members: list[Member]) -> list[Member]:
    """The members, a name shared by two of them suffixed with the config's sha256 prefix."""
    names = [m.name for m in members]
    return [
        dataclasses.replace(m, name=f"{m.name}@{m.config_sha256[:8]}") if names.count(m.name) > 1 else m
        for m in members
    ]


def _check_folds(runs: dict[str, dict[int, str]]) -> None:
    """ManifestError naming the members that lack a fold another member has."""
    every = sorted({fold for per_fold in runs.values() for fold in per_fold})
    lacking = {name: sorted(set(every) - set(per_fold)) for name, per_fold in runs.items()}
    lacking = {name: folds for name, folds in lacking.items() if folds}
    if lacking:
        text = "; ".join(f"{name} has no model of fold(s) {folds}" for name, folds in sorted(lacking.items()))
        raise ManifestError(f"every fold of the ensemble needs every member: {text}")


def _by_folds_file(entries: Sequence[ModelEntry]) -> str:
    groups: dict[str, list[str]] = {}
    for entry in entries:
        groups.setdefault(entry.provenance.folds_sha256[:12], []).append(entry.name)
    return "; ".join(f"{sha}...: {', '.join(names)}" for sha, names in sorted(groups.items()))
