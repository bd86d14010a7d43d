"""`report eda`: the train set's figures (PNG) and one self-contained `report.html`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steel_seg.competition import CLASSES
from steel_seg.formats.images import read_grey
from steel_seg.formats.labels import Labels
from steel_seg.progress import track
from steel_seg.report import eda, figures
from steel_seg.report.html import HtmlPage, Written
from steel_seg.report.overlay import draw_contours

PALETTE = 128  # colours of the photo figures' palette PNGs (see figures.save)


@dataclass(frozen=True)
class EdaSettings:
    """Knobs of the EDA page: overlay samples per class, the seed that draws them, clusters shown."""

    per_class: int = 3
    seed: int = 0
    max_clusters: int = 6
    cluster_rows: int = 6
    thickness: int = 2


def build(
    labels: Labels,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    clusters: Sequence[Sequence[str]] | None = None,
    settings: EdaSettings = EdaSettings(),
) -> Written:
    """Write the EDA figures and `out_dir/report.html`.

    `clusters`: near-duplicate groups of ImageIds (`eda.near_duplicate_clusters`); None leaves it out.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    stats = eda.collect(labels)
    page = HtmlPage("Severstal train set: exploratory analysis")
    _summary(page, stats, out_dir)
    _overlays(page, labels, stats, images_dir, out_dir, settings)
    if clusters is not None:
        _clusters(page, labels, images_dir, out_dir, clusters, settings)
    n_groups = len(eda.multi_member(clusters or []))
    summary = f"{len(stats.presence)} images, {sum(a.size for a in stats.areas.values())} masks"
    if clusters is not None:
        summary += f", {n_groups} near-duplicate clusters"
    return Written(page.write(out_dir / "report.html"), list(page.figures), summary)


def _summary(page: HtmlPage, stats: eda.EdaStats, out: Path) -> None:
    n = len(stats.presence)
    counts = {f"class {c}": int(stats.presence[c].sum()) for c in CLASSES}
    free = int((~stats.presence[list(CLASSES)].any(axis=1)).sum())
    page.heading("Classes")
    page.text(f"{n} images; {n - free} with at least one defect, {free} defect-free.")
    page.table(stats.class_table(), "Per class", digits=1)
    page.table(stats.classes_per_image(), "Defect classes per image")
    colours = [figures.class_colour(c) for c in CLASSES] + ["#999999"]
    bars = figures.bars({**counts, "defect-free": free}, "Images per class", "images", colours)
    page.figure(figures.save(bars, out / "class_counts.png"), "Images carrying each class.")
    labels = [f"class {c}" for c in CLASSES]
    co = figures.matrix(stats.cooccurrence(), labels, "Images carrying both classes")
    page.figure(figures.save(co, out / "cooccurrence.png"), "Co-occurrence (diagonal: images per class).")
    page.heading("Masks")
    areas = figures.per_class_hist(stats.areas, "Mask area per class (log scale)", "pixels", log_x=True)
    page.figure(figures.save(areas, out / "mask_areas.png"), "Area of each non-empty mask, log-spaced bins.")
    comps = figures.per_class_hist(
        stats.components, "Connected components per mask (8-connectivity)", "components", integer=True
    )
    page.figure(figures.save(comps, out / "components.png"), "How many separate blobs one class mask has.")
    counts_by_id = {c: int(stats.areas[c].size) for c in CLASSES}
    heat = figures.position_maps(stats.heat, counts_by_id, "Where defects sit")
    page.figure(figures.save(heat, out / "positions.png"), "Share of each class's masks covering each pixel.")


def _overlays(
    page: HtmlPage, labels: Labels, stats: eda.EdaStats, images_dir: Path, out: Path, settings: EdaSettings
) -> None:
    page.heading("Sample images")
    page.text("Each class's contour in its own colour; every class of the image is drawn.", note=True)
    n, seed = settings.per_class, settings.seed
    samples = {c: eda.sample_images(stats.presence, c, n, seed) for c in CLASSES}
    firsts = one_per_class(samples)
    if firsts:
        rows = [_overlay_row(labels, images_dir, i, settings.thickness) for i in firsts]
        path = figures.save(figures.image_rows(rows, width_in=10.0), out / "overlays.png", palette=PALETTE)
        page.figure(path, "One image per class.")
    for c in CLASSES:
        ids = samples[c]
        if not ids:
            page.text(f"class {c}: no image carries it.")
            continue
        ids = track(ids, f"eda: class {c} overlays")
        fig = figures.image_rows([_overlay_row(labels, images_dir, i, settings.thickness) for i in ids])
        path = figures.save(fig, out / f"overlays_class{c}.png", palette=PALETTE)
        page.figure(path, f"Images with class {c}.")


def one_per_class(samples: dict[int, list[str]]) -> list[str]:
    """A different image for each class where possible (rarest class chooses first), in class order."""
    chosen: dict[int, str] = {}
    for c in sorted(samples, key=lambda c: (len(samples[c]), c)):
        free = [i for i in samples[c] if i not in chosen.values()]
        if free:
            chosen[c] = free[0]
    return [chosen[c] for c in sorted(chosen)]


def _overlay_row(labels: Labels, images_dir: Path, image_id: str, thickness: int) -> tuple[np.ndarray, str]:
    masks = labels.masks(image_id)
    present = [str(c) for c, mask in zip(CLASSES, masks, strict=True) if mask.any()]
    rgb = draw_contours(read_grey(images_dir / image_id), masks, thickness)
    return rgb, f"{image_id}   classes: {', '.join(present) or 'none'}"


def _clusters(
    page: HtmlPage,
    labels: Labels,
    images_dir: Path,
    out: Path,
    clusters: Sequence[Sequence[str]],
    settings: EdaSettings,
) -> None:
    groups = eda.multi_member(clusters)
    sizes = [len(g) for g in groups]
    page.heading("Near-duplicate clusters")
    page.text(
        f"{len(groups)} clusters of two or more near-identical images ({sum(sizes)} images); "
        "folds must keep each cluster on one side, or validation scores leak."
    )
    for k, group in enumerate(groups[: settings.max_clusters]):
        shown = group[: settings.cluster_rows]
        rows = [_overlay_row(labels, images_dir, i, settings.thickness) for i in shown]
        fig = figures.image_rows(rows)
        more = f", first {len(shown)} shown" if len(shown) < len(group) else ""
        caption = f"Cluster {k + 1}: {len(group)} images{more}."
        page.figure(figures.save(fig, out / f"cluster_{k + 1}.png", palette=PALETTE), caption)
