"""`report eval`: figures (PNG) and one self-contained `report.html` on out-of-fold predictions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steel_seg.competition import CLASS_ID, CLASSES, IMAGE_ID
from steel_seg.formats.images import fit_shape, read_grey
from steel_seg.formats.oof import OOF
from steel_seg.postprocess.rules import Rules, apply
from steel_seg.progress import track
from steel_seg.report import evaluate, figures
from steel_seg.report.evaluate import Evaluation
from steel_seg.report.html import HtmlPage, Written
from steel_seg.report.overlay import draw_contours, probability_rgb

PALETTE = 128  # colours of the photo figures' palette PNGs (see figures.save)


@dataclass(frozen=True)
class EvalSettings:
    """Knobs of the evaluation page: worst pairs shown per class, contour width, curve thresholds."""

    worst: int = 3
    thickness: int = 2
    curve_thresholds: tuple[float, ...] = evaluate.CURVE_THRESHOLDS


def build(
    oof: OOF,
    rules: Rules,
    out_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    settings: EvalSettings = EvalSettings(),
    rules_source: str = "defaults",
) -> Written:
    """Write the evaluation figures and `out_dir/report.html`.

    `images_dir`: the train JPEGs, drawn under the worst pairs' contours (a plain grey canvas without it).
    """
    ev = evaluate.collect(oof, rules, settings.curve_thresholds)
    return render(ev, oof, out_dir, images_dir, settings, rules_source)


def render(
    ev: Evaluation,
    oof: OOF,
    out_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    settings: EvalSettings = EvalSettings(),
    rules_source: str = "defaults",
) -> Written:
    """Write the figures and page of an evaluation already collected (`build` = `collect` + `render`)."""
    out = Path(out_dir)
    page = HtmlPage("Out-of-fold evaluation")
    _summary(page, ev, oof, rules_source)
    _presence(page, ev, out)
    _curves(page, ev, out)
    _worst(page, ev, oof, out, None if images_dir is None else Path(images_dir), settings)
    summary = f"mean Dice {ev.score.mean_dice:.4f} on {ev.score.n_images} images (rules: {rules_source})"
    return Written(page.write(out / "report.html"), list(page.figures), summary)


def _summary(page: HtmlPage, ev: Evaluation, oof: OOF, rules_source: str) -> None:
    s = ev.score
    page.heading("Score")
    page.text(
        f"{s.n_images} images from {len(oof.dirs)} OOF folder(s), {s.n_pairs} (image, class) pairs. "
        f"Mean Dice {s.mean_dice:.4f}; an all-empty prediction scores {ev.empty_baseline.mean_dice:.4f}."
    )
    page.table(ev.rules_table(), f"Post-processing rules ({rules_source})")
    page.table(ev.class_table(), "Dice per class, split by empty and non-empty truth")
    page.heading("Where the score is lost")
    page.text(
        "Points of the mean Dice lost per kind of pair: FP = a prediction on an empty truth, FN = nothing "
        "predicted on a defect, partial = both non-empty but not overlapping perfectly. "
        "The 'all' row's total is 1 - mean Dice.",
        note=True,
    )
    page.table(ev.loss_table(), "Dice lost, by kind of pair")


def _presence(page: HtmlPage, ev: Evaluation, out: Path) -> None:
    loss = ev.loss_table().loc[[f"class {c}" for c in CLASSES]]
    parts = {k: loss[f"lost to {k}"].to_numpy() for k in ("FP", "FN", "partial")}
    fig = figures.stacked_bars(parts, list(loss.index), "Mean Dice lost per class", "points of mean Dice")
    page.figure(figures.save(fig, out / "dice_lost.png"), "Dice lost per class, by kind of pair.")
    page.heading("Image-level presence")
    page.table(ev.presence_table(), "Predicted non-empty vs truth non-empty, per class")
    truth = ev.score.pairs.pivot(index=IMAGE_ID, columns=CLASS_ID, values="truth_area").loc[ev.gate.index] > 0
    series, marks = {}, {}
    for rule in ev.rules.classes:
        c = rule.class_id
        gate, present = ev.gate[c].to_numpy(), truth[c].to_numpy()
        fpr, tpr, _, auc = evaluate.roc(gate, present)
        series[c] = (fpr, tpr, auc)
        kept = (gate >= np.float32(rule.gate)) & (ev.seg_score[c].to_numpy() >= np.float32(rule.seg_gate))
        if present.any() and (~present).any():
            marks[c] = (float(kept[~present].mean()), float(kept[present].mean()))
    fig = figures.roc_curves(series, marks, f"ROC of the gate score ({ev.gate_source})")
    page.figure(figures.save(fig, out / "roc.png"), f"Image-level ROC of the gate score ({ev.gate_source}).")


def _curves(page: HtmlPage, ev: Evaluation, out: Path) -> None:
    page.heading("Dice against the rules")
    thresholds = ev.threshold_curves()
    marks = {r.class_id: r.pixel_threshold for r in ev.rules.classes}
    fig = figures.curves(thresholds, marks, "Class Dice vs pixel threshold", "pixel threshold", "class Dice")
    page.figure(figures.save(fig, out / "dice_vs_threshold.png"), "Other settings of each rule held fixed.")
    comps = ev.component_curves()
    marks = {r.class_id: float(r.min_component) for r in ev.rules.classes}
    fig = figures.curves(
        comps, marks, "Class Dice vs minimum component size", "min component (px)", "class Dice", log_x=True
    )
    page.figure(
        figures.save(fig, out / "dice_vs_min_component.png"), "Other settings of each rule held fixed."
    )


def _worst(
    page: HtmlPage, ev: Evaluation, oof: OOF, out: Path, images_dir: Path | None, settings: EvalSettings
) -> None:
    page.heading("Worst images per class")
    page.text(
        "Per image: truth contours, predicted contours (after the rules), the class's probability.", note=True
    )
    for c in CLASSES:
        worst = ev.worst(c, settings.worst)
        if worst.empty:
            page.text(f"class {c}: every pair scores Dice 1.")
            continue
        page.table(worst[["dice", "truth_area", "pred_area", "intersection"]], f"Class {c}: worst pairs")
        rows = []
        for image_id, pair in track(worst.iterrows(), f"eval: class {c} worst", total=len(worst)):
            rows += _worst_rows(ev, oof, image_id, c, float(pair["dice"]), images_dir, settings.thickness)
        fig = figures.image_rows(rows)
        page.figure(
            figures.save(fig, out / f"worst_class{c}.png", palette=PALETTE), f"Worst class {c} pairs."
        )


def _worst_rows(
    ev: Evaluation, oof: OOF, image_id: str, c: int, dice: float, images_dir: Path | None, thickness: int
) -> list[tuple[np.ndarray, str]]:
    probs, cls = oof.probs(image_id), oof.cls_of(image_id)
    grey = _grey(images_dir, image_id, oof.shape)
    truth, pred = oof.truth.masks(image_id), apply(probs, ev.rules, cls)
    return [
        (draw_contours(grey, truth, thickness), f"{image_id}   class {c}: Dice {dice:.4f}   truth"),
        (draw_contours(grey, pred, thickness), f"{image_id}   prediction after the rules"),
        (probability_rgb(probs[c - 1]), f"{image_id}   class {c} probability (black 0, yellow 1)"),
    ]


def _grey(images_dir: Path | None, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    if images_dir is None:
        return np.full(shape, 96, np.uint8)
    return fit_shape(read_grey(images_dir / image_id, shape=None), shape)
