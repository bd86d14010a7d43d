"""Matplotlib figures for the reports (Agg canvas, no pyplot state): bars, matrices, histograms, image rows.

Every function returns a `Figure`; `save` writes it as PNG and closes nothing global, so reports can run in
threads, notebooks or headless CI alike.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image

from steel_seg.competition import CLASSES, N_CLASSES
from steel_seg.report.overlay import CLASS_COLOURS, magma_colours

_ROW_TITLE_IN = 0.32  # inches of title above each image row
_LEGEND_IN = 0.45


def class_colour(class_id: int) -> tuple[float, float, float]:
    """Matplotlib colour (0..1 RGB) of a ClassId, the same as the overlays' contours."""
    return tuple(c / 255 for c in CLASS_COLOURS[class_id])


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 100, palette: int | None = None) -> Path:
    """Write `fig` as PNG at `path` (folders created) and return the path.

    `palette`: store as an 8-bit PNG over a fixed palette of that many colours (`_palette_image`). Photos of
    steel are mostly sensor noise that lossless PNG cannot squeeze; grey levels plus the exact class colours
    keep them readable at about a third of the size, which keeps `report.html` light.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        fig.savefig(path, format="png", dpi=dpi, facecolor="white")
        return path
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    image = Image.open(buffer).convert("RGB")
    image = image.quantize(palette=_palette_image(palette), dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)
    return path


def _palette_image(n: int) -> Image.Image:
    """A fixed palette of `n` <= 256 colours: the four class colours exactly, 64 steps of the probability
    colour map, and `n - 68` grey levels from black to white."""
    if not 68 + 2 <= n <= 256:
        raise ValueError(f"palette of {n} colours: need 70..256")
    colours = [CLASS_COLOURS[c] for c in CLASSES] + [tuple(rgb) for rgb in magma_colours(64).tolist()]
    greys = np.linspace(0, 255, n - len(colours)).round().astype(int).tolist()
    flat = [v for rgb in colours for v in rgb] + [g for g in greys for _ in range(3)]
    image = Image.new("P", (1, 1))
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def class_legend(fig: Figure, classes: Sequence[int] = CLASSES, y: float = 1.0) -> None:
    handles = [Patch(color=class_colour(c), label=f"class {c}") for c in classes]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, y))


def image_rows(rows: Sequence[tuple[np.ndarray, str]], legend: bool = True, width_in: float = 12.0) -> Figure:
    """Full-width images stacked top to bottom, each under its own title, with the class legend on top.

    Args:
        rows: (image, title) pairs; image (H, W, 3) uint8 RGB or (H, W) uint8 grey, all the same size.
        legend: draw the four class colours above the first row.
        width_in: figure width in inches (at 100 dpi, 12 in = 1200 px).
    """
    if not rows:
        raise ValueError("image_rows needs at least one image")
    h, w = rows[0][0].shape[:2]
    img_in = width_in * h / w
    top = _LEGEND_IN if legend else 0.0
    height = top + len(rows) * (img_in + _ROW_TITLE_IN)
    fig = new_figure(width_in, height)
    for i, (image, title) in enumerate(rows):
        y = height - top - (i + 1) * (img_in + _ROW_TITLE_IN)
        ax = fig.add_axes((0.0, y / height, 1.0, img_in / height))
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=11, loc="left", pad=3)
    if legend:
        class_legend(fig, y=1.0)
    return fig


def bars(values: Mapping[str, float], title: str, ylabel: str, colours: Sequence | None = None) -> Figure:
    """One bar per label, the value printed above each bar."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    labels = list(values)
    heights = [values[k] for k in labels]
    drawn = ax.bar(labels, heights, color=colours)
    ax.bar_label(drawn, fmt="%g", fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def matrix(values: np.ndarray, labels: Sequence[str], title: str, fmt: str = "{:g}") -> Figure:
    """Square matrix as a heat map with every cell's value printed: `values: (K, K)`."""
    fig = new_figure(5.5, 4.8)
    ax = fig.add_subplot()
    shown = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    peak = float(np.max(values)) if values.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, fmt.format(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def per_class_hist(
    samples: Mapping[int, np.ndarray], title: str, xlabel: str, log_x: bool = False, integer: bool = False
) -> Figure:
    """Four histograms (one per class) in a 2x2 grid; `samples[c]` holds the values of class c.

    `log_x` uses log-spaced bins (for areas spanning decades); `integer` centres bins on whole numbers.
    """
    fig = new_figure(10, 6.5)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    every = np.concatenate([np.asarray(samples.get(c, []), dtype=float) for c in CLASSES])
    bins = _bins(every, log_x, integer) if every.size else 10
    for i, (ax, c) in enumerate(zip(axes, CLASSES, strict=True)):
        values = np.asarray(samples.get(c, []), dtype=float)
        ax.set_title(f"class {c} (n = {values.size})", fontsize=10)
        ax.set_xlabel(xlabel if i >= 2 else "")
        ax.set_ylabel("masks")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if values.size == 0:
            ax.text(0.5, 0.5, "no masks", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(values, bins=bins, color=class_colour(c), edgecolor="black", lw=0.4)
        ax.axvline(float(np.median(values)), color="black", ls="--", lw=1, label="median")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _bins(values: np.ndarray, log_x: bool, integer: bool) -> np.ndarray | int:
    lo, hi = float(values.min()), float(values.max())
    if integer:
        return np.arange(np.floor(lo), np.ceil(hi) + 2) - 0.5
    if log_x:
        lo = max(lo, 1.0)
        return np.geomspace(lo / 1.05, max(hi, lo) * 1.05, 30)
    return 30


def position_maps(heat: np.ndarray, counts: Mapping[int, int], title: str) -> Figure:
    """Where defects sit: `heat: (4, h, w)` share of each class's masks covering each pixel; a row a class."""
    h, w = heat.shape[1:]
    fig = Figure(figsize=(12, 0.5 + N_CLASSES * (11 * h / w + 0.35)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(N_CLASSES, 1)
    for ax, c in zip(axes, CLASSES, strict=True):
        shown = ax.imshow(heat[c - 1], cmap="magma", vmin=0, aspect="equal", interpolation="bilinear")
        ax.set_title(f"class {c}: share of its {counts.get(c, 0)} masks covering each pixel", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.02, pad=0.01)
    fig.suptitle(title)
    return fig


def curves(
    series: Mapping[int, tuple[np.ndarray, np.ndarray]],
    marks: Mapping[int, float],
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
) -> Figure:
    """One line per class (`series[c] = (x, y)`); the x in use (`marks[c]`) marked on each line."""
    fig = new_figure(8, 4.8)
    ax = fig.add_subplot()
    for c, (x, y) in series.items():
        ax.plot(x, y, color=class_colour(c), label=f"class {c}", lw=1.8)
        if c in marks:
            mx = marks[c]
            ax.plot([mx], [np.interp(mx, x, y)], "o", color=class_colour(c), mec="black", ms=8)
    if log_x:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title="o = rule in use")
    fig.tight_layout()
    return fig


def roc_curves(
    series: Mapping[int, tuple[np.ndarray, np.ndarray, float]],
    marks: Mapping[int, tuple[float, float]],
    title: str,
) -> Figure:
    """ROC per class: `series[c] = (fpr, tpr, auc)`, `marks[c] = (fpr, tpr)` of the gate in use."""
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    for c, (fpr, tpr, auc) in series.items():
        ax.plot(fpr, tpr, color=class_colour(c), lw=1.8, label=f"class {c} (AUC {auc:.3f})")
        if c in marks:
            ax.plot(*marks[c], "o", color=class_colour(c), mec="black", ms=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (empty-truth images kept)")
    ax.set_ylabel("true positive rate (defect images kept)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", title="o = gate in use")
    fig.tight_layout()
    return fig


def stacked_bars(
    parts: Mapping[str, Sequence[float]], labels: Sequence[str], title: str, ylabel: str
) -> Figure:
    """Bars of `labels`, each stacked from `parts[name][i]` (one colour per part name, legend by name)."""
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    bottom = np.zeros(len(labels))
    for (name, values), colour in zip(parts.items(), ("#d62728", "#1f77b4", "#7f7f7f"), strict=False):
        ax.bar(labels, values, bottom=bottom, label=name, color=colour)
        bottom += np.asarray(values, dtype=float)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
