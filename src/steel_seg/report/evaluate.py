"""Evaluation statistics of out-of-fold predictions under post-processing rules.

One pass over the OOF images (`formats.oof`): each image's stored probabilities are read once,
post-processed by `postprocess.rules` into the predicted masks (kept only as RLE), and fed to
`postprocess.tune`'s statistics collector for the Dice-versus-rule curves. The pass runs over contiguous
chunks of the images, spread over worker processes by `tune.map_oof` and joined in order, so every number
is the same for any worker count. Every Dice number is then `formats.metric`'s: the per-pair table of
`metric.score` is the one source the tables are cut from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from steel_seg.competition import CLASS_ID, CLASSES, IMAGE_ID, N_CLASSES, TIDY_COLUMNS
from steel_seg.formats import metric, rle
from steel_seg.formats.oof import OOF, dequantise
from steel_seg.postprocess import tune
from steel_seg.postprocess.rules import ClassRule, Rules, apply, gate_scores

# Each curve threshold costs one connected-component pass per image and class (tune's collector): 9 points.
CURVE_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))  # 0.1 .. 0.9
CURVE_MIN_COMPONENTS = (0, 25, 50, 100, 150, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200)


@dataclass
class Evaluation:
    """What `collect` measures.

    score: `metric.Score` of the post-processed predictions (its `pairs`: one row per (image, class)).
    empty_baseline: `metric.Score` of an all-empty prediction on the same images.
    gate: index ImageId, float32 columns 1..4: the image-level score each rule's `gate` limits.
    seg_score: the same for the max pixel probability, which each rule's `seg_gate` limits.
    gate_source: "classifier" (cls.csv) or "max pixel probability".
    curve_stats: `tune.Stats` at `thresholds` (the curve grid plus every rule's own threshold).
    """

    rules: Rules
    score: metric.Score
    empty_baseline: metric.Score
    gate: pd.DataFrame
    seg_score: pd.DataFrame
    gate_source: str
    curve_stats: tune.Stats

    def class_table(self) -> pd.DataFrame:
        """Per class and overall: Dice on all pairs, on empty-truth pairs and on non-empty-truth pairs."""
        s, empty, full = self.score, self.score.empty_truth, self.score.nonempty_truth
        rows = {}
        for c in CLASSES:
            rows[f"class {c}"] = [
                s.per_class[c],
                empty.per_class[c],
                empty.n_per_class[c],
                full.per_class[c],
                full.n_per_class[c],
            ]
        rows["all"] = [s.mean_dice, empty.mean_dice, empty.n_pairs, full.mean_dice, full.n_pairs]
        columns = [
            "Dice",
            "Dice empty truth",
            "pairs empty truth",
            "Dice non-empty truth",
            "pairs non-empty truth",
        ]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=columns).astype(
            {"pairs empty truth": int, "pairs non-empty truth": int}
        )
        table.index.name = "class"
        return table

    def presence_table(self) -> pd.DataFrame:
        """Image-level presence per class: predicted non-empty vs truth non-empty (TP/FP/FN/TN)."""
        pairs = self.score.pairs
        rows = {}
        for c in CLASSES:
            p = pairs[pairs[CLASS_ID] == c]
            truth, pred = p["truth_area"].to_numpy() > 0, p["pred_area"].to_numpy() > 0
            tp, fp = int(np.sum(truth & pred)), int(np.sum(~truth & pred))
            fn, tn = int(np.sum(truth & ~pred)), int(np.sum(~truth & ~pred))
            rows[f"class {c}"] = {
                "TP": tp,
                "FP": fp,
                "FN": fn,
                "TN": tn,
                "precision": tp / (tp + fp) if tp + fp else np.nan,
                "recall": tp / (tp + fn) if tp + fn else np.nan,
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "class"
        return table

    def loss_table(self) -> pd.DataFrame:
        """Where the mean Dice is lost, in points of the mean: the "all" row's "total lost" is 1 - score.

        FP on empty truth: a prediction where the truth is empty (each such pair loses its whole Dice);
        FN on non-empty truth: nothing predicted on a defect; partial: both non-empty, Dice < 1.
        """
        pairs, n = self.score.pairs, self.score.n_pairs
        rows = {}
        for name, p in [*((f"class {c}", pairs[pairs[CLASS_ID] == c]) for c in CLASSES), ("all", pairs)]:
            truth, pred, lost = p["truth_area"] > 0, p["pred_area"] > 0, 1.0 - p["dice"]
            fp, fn, both = ~truth & pred, truth & ~pred, truth & pred
            rows[name] = {
                "FP pairs": int(fp.sum()),
                "lost to FP": float(lost[fp].sum() / n),
                "FN pairs": int(fn.sum()),
                "lost to FN": float(lost[fn].sum() / n),
                "partial pairs": int(both.sum()),
                "lost to partial": float(lost[both].sum() / n),
                "total lost": float(lost.sum() / n),
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "class"
        return table

    def worst(self, class_id: int, n: int) -> pd.DataFrame:
        """The `n` lowest-Dice pairs of a class (Dice < 1 only); ties: larger truth + predicted area first."""
        pairs = self.score.pairs
        p = pairs[(pairs[CLASS_ID] == class_id) & (pairs["dice"] < 1.0)].copy()
        p["size"] = p["truth_area"] + p["pred_area"]
        p = p.sort_values(["dice", "size", IMAGE_ID], ascending=[True, False, True]).head(n)
        return p.drop(columns="size").set_index(IMAGE_ID)

    def threshold_curves(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class: (pixel thresholds, class Dice), the rule's other settings held fixed."""
        out = {}
        thresholds = np.array(self.curve_stats.thresholds)
        for k, rule in enumerate(self.rules.classes):
            grid = _grid(self.curve_stats, (rule.min_component,), rule)
            scores = tune.score_class(self.curve_stats.classes[k], self.curve_stats.thresholds, grid)
            c, a, g, s = _rule_index(grid, rule)
            out[rule.class_id] = (thresholds, scores[:, c, a, g, s])
        return out

    def component_curves(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class: (minimum component sizes, class Dice), the rule's other settings held fixed."""
        out = {}
        for k, rule in enumerate(self.rules.classes):
            grid = _grid(self.curve_stats, CURVE_MIN_COMPONENTS + (rule.min_component,), rule)
            scores = tune.score_class(self.curve_stats.classes[k], self.curve_stats.thresholds, grid)
            t = self.curve_stats.thresholds.index(rule.pixel_threshold)
            _, a, g, s = _rule_index(grid, rule)
            out[rule.class_id] = (np.array(grid.min_components, dtype=float), scores[t, :, a, g, s])
        return out

    def rules_table(self) -> pd.DataFrame:
        rows = {
            f"class {r.class_id}": [r.pixel_threshold, r.min_component, r.min_area, r.gate, r.seg_gate]
            for r in self.rules.classes
        }
        columns = ["pixel threshold", "min component", "min area", "gate", "seg gate"]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=columns).astype(
            {"min component": int, "min area": int}
        )
        table.index.name = "class"
        return table


def _grid(stats: tune.Stats, min_components: Sequence[int], rule: ClassRule) -> tune.Grid:
    return tune.Grid(
        pixel_thresholds=stats.thresholds,
        min_components=tuple(min_components),
        min_areas=(rule.min_area,),
        gates=(rule.gate,),
        seg_gates=(rule.seg_gate,),
        one_class_per_pixel=stats.one_class_per_pixel,
    )


def _rule_index(grid: tune.Grid, rule: ClassRule) -> tuple[int, int, int, int]:
    return (
        grid.min_components.index(rule.min_component),
        grid.min_areas.index(rule.min_area),
        grid.gates.index(rule.gate),
        grid.seg_gates.index(rule.seg_gate),
    )


def curve_thresholds(rules: Rules, grid: Sequence[float] = CURVE_THRESHOLDS) -> tuple[float, ...]:
    """The curve grid plus each class's own pixel threshold, sorted (so the rule in use lies on its curve)."""
    return tuple(sorted(set(map(float, grid)) | {r.pixel_threshold for r in rules.classes}))


@dataclass
class _Part:
    """What one chunk of images contributes: predicted defect rows (ImageId, ClassId, RLE), gate scores
    `(n, 2, 4) float32` (`rules.gate_scores`), curve statistics."""

    rows: list[tuple[str, int, str]]
    gates: np.ndarray
    stats: tune.Stats


def _collect_part(oof: OOF, rules: Rules, thresholds: tuple[float, ...]) -> _Part:
    """Post-process, encode and gather the statistics of every image of `oof` (a `tune.map_oof` job)."""
    collector = tune.StatsCollector(thresholds, rules.one_class_per_pixel)
    rows: list[tuple[str, int, str]] = []
    gates = np.zeros((len(oof.image_ids), 2, N_CLASSES), np.float32)
    for i, image_id in enumerate(oof.image_ids):
        values, cls = oof.probs_u8(image_id), oof.cls_of(image_id)
        probs = dequantise(values)
        masks = apply(probs, rules, cls)
        rows += [(image_id, c, rle.encode(m)) for c, m in zip(CLASSES, masks, strict=True) if m.any()]
        gates[i] = gate_scores(probs, cls)
        collector.add(image_id, values, oof.truth.masks(image_id), cls)
    return _Part(rows, gates, collector.finish())


def collect(
    oof: OOF, rules: Rules, thresholds: Sequence[float] = CURVE_THRESHOLDS, workers: int = 1
) -> Evaluation:
    """Post-process every OOF image with `rules`, score it with `metric`, gather the curve statistics;
    the images are spread over `workers` processes (`tune.map_oof`), the result is the same for any."""
    job = partial(_collect_part, rules=rules, thresholds=curve_thresholds(rules, thresholds))
    parts = tune.map_oof(job, oof, workers, "eval: OOF images")
    pred = pd.DataFrame([row for part in parts for row in part.rows], columns=list(TIDY_COLUMNS))
    gates = np.concatenate([part.gates for part in parts])
    return Evaluation(
        rules=rules,
        score=metric.score(oof.truth.table, pred, oof.image_ids, oof.shape),
        empty_baseline=metric.score(oof.truth.table, pred.iloc[:0], oof.image_ids, oof.shape),
        gate=pd.DataFrame(gates[:, 0], index=pd.Index(oof.image_ids, name=IMAGE_ID), columns=list(CLASSES)),
        seg_score=pd.DataFrame(
            gates[:, 1], index=pd.Index(oof.image_ids, name=IMAGE_ID), columns=list(CLASSES)
        ),
        gate_source="classifier" if oof.cls is not None else "max pixel probability",
        curve_stats=tune.Stats.concat([part.stats for part in parts]),
    )


def roc(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """ROC of image-level scores against bool truth: (fpr, tpr, thresholds, AUC); NaN AUC for one class only.

    Points are taken at every distinct score (descending), starting at (0, 0) with threshold +inf; a point
    counts `score >= threshold` as positive, the gate's own comparison.
    """
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)
    tps, fps = np.cumsum(t)[last], np.cumsum(~t)[last]
    pos, neg = int(t.sum()), int((~t).sum())
    tpr = np.r_[0.0, tps / pos] if pos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fps / neg] if neg else np.full(last.size + 1, np.nan)
    auc = float(np.trapezoid(tpr, fpr)) if pos and neg else float("nan")
    return fpr, tpr, np.r_[np.inf, s[last]], auc
