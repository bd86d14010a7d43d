"""Reports: overlays draw the masks, tables carry `metric`'s numbers, every figure is embedded.

The EDA page runs on the synthetic set (its statistics are also checked against the real sample where
`../shared` is present); the evaluation page on an OOF folder written by `OOFWriter` from the synthetic set's
masks plus blur, shift, noise and false-positive blobs (a classifier column included).
"""

from __future__ import annotations

import base64
import html.parser
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from test_tune import assert_stats_equal, small_case, write_small_oof

from steel_seg.cli import COMMANDS
from steel_seg.cli import main as cli_main
from steel_seg.competition import CLASSES
from steel_seg.formats import metric, rle
from steel_seg.formats.images import read_grey
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter, read_oofs
from steel_seg.postprocess import tune
from steel_seg.postprocess.rules import ClassRule, Rules, apply
from steel_seg.report import eda, eda_page, eval_page, evaluate
from steel_seg.report.html import HtmlPage, png_data_uri, table_html
from steel_seg.report.overlay import CLASS_COLOURS, boundary, draw_contours, probability_rgb

CURVE_THRESHOLDS = (0.3, 0.5, 0.7)
RULES = Rules(
    (
        ClassRule(1, 0.45, 50, 0, 0.3),
        ClassRule(2, 0.5, 0, 300, 0.0),
        ClassRule(3, 0.55, 100, 600, 0.5),
        ClassRule(4, 0.5, 0, 0, 0.0),
    )
)


# --------------------------------------------------------------------------------------------- helpers
def write_noisy_oof(labels: Labels, out: Path, has_cls: bool, seed: int = 0) -> Path:
    """An OOF dir from the true masks: blurred, shifted a few px, noisy, with false-positive blobs."""
    rng = np.random.default_rng(seed)
    writer = OOFWriter(out, source="test", fold=0, has_cls=has_cls)
    for i, image_id in enumerate(labels.image_ids):
        truth = labels.masks(image_id).astype(np.float32)
        probs = np.stack([cv2.GaussianBlur(m, (0, 0), 6) for m in truth]) * 0.9
        probs = np.roll(probs, int(rng.integers(-8, 9)), axis=2) + rng.uniform(0, 0.3, probs.shape)
        if i % 4 == 0:
            k, y, x = int(rng.integers(0, 4)), int(rng.integers(30, 220)), int(rng.integers(50, 1550))
            probs[k, y - 20 : y + 20, x - 40 : x + 40] += 0.6
        probs = np.clip(probs, 0, 1).astype(np.float32)
        cls = np.clip(probs.reshape(4, -1).max(1) - rng.uniform(0, 0.3, 4), 0, 1) if has_cls else None
        writer.add(image_id, probs, cls)
    return writer.close(labels)


class _Page(html.parser.HTMLParser):
    """Collects <img> sources and table cells (rows of text) from an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.captions: list[str] = []
        self._cell: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables.append([])
            self.captions.append("")
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._in_caption = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption:
            self.captions[-1] += data

    def table(self, caption_start: str) -> pd.DataFrame:
        """The table whose caption starts with `caption_start`, as strings, first column as index."""
        (k,) = [i for i, c in enumerate(self.captions) if c.startswith(caption_start)]
        head, *rows = self.tables[k]
        return pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows], columns=head[1:])


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def run_report_cli(argv: list[str]) -> int:
    """`steel-seg report ...` (the CLI imports only the chosen subcommand, not the torch-heavy others)."""
    return cli_main(argv)


def check_written(written) -> _Page:
    """Every figure decodes as a sensibly sized PNG and is embedded byte for byte; nothing external."""
    text = written.html.read_text(encoding="utf-8")
    page = parse(written.html)
    assert len(page.images) == len(written.figures) > 0
    for path, img in zip(written.figures, page.images, strict=True):
        data = path.read_bytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None, path
        h, w = decoded.shape[:2]
        assert 300 <= w <= 2000 and 200 <= h <= 8000, (path, decoded.shape)
        assert decoded.std() > 5, f"{path}: blank figure"
        assert img["src"] == "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "<script" not in text and "http://" not in text and "https://" not in text
    return page


# --------------------------------------------------------------------------------------------- overlay
def test_contours_follow_the_rle_of_the_masks(synthetic_set, synthetic_labels):
    labels = synthetic_labels
    presence = labels.presence()
    image_id = presence.index[presence[3] & presence[4]][0]  # classes 3 and 4
    grey = read_grey(synthetic_set.out_dir / "train_images" / image_id)
    masks = labels.masks(image_id)
    drawn = draw_contours(grey, masks, thickness=1)
    for c in (3, 4):
        mask = masks[c - 1].astype(bool)
        on_colour = np.all(drawn == CLASS_COLOURS[c], axis=2)
        assert on_colour.sum() > 100
        # a pixel on the drawn contour lies on the mask and touches a pixel off it (8-neighbourhood)
        padded = np.pad(mask, 1)
        off_neighbour = np.zeros_like(mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                off_neighbour |= ~padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
        edge = mask & off_neighbour
        if c == 4:  # drawn last, so nothing covers it: contour == boundary exactly
            assert np.array_equal(on_colour, edge)
        else:
            assert np.all(edge[on_colour])
        # the top pixel of each RLE run whose pixel above is off the mask is on the contour
        starts, lengths = rle.runs(labels.table.set_index(["ImageId", "ClassId"]).loc[(image_id, c)].iloc[0])
        rows, cols = starts % 256, starts // 256
        top = (rows > 0) & ~mask[np.maximum(rows - 1, 0), cols]
        assert top.sum() > 10
        assert np.all(edge[rows[top], cols[top]])
        assert np.all(np.any(drawn[rows[top], cols[top]] != grey[rows[top], cols[top], None], axis=1))
    # pixels far from every mask keep the grey value in all three channels
    near = cv2.dilate(masks.max(axis=0), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.array_equal(drawn[~near], np.repeat(grey[~near][:, None], 3, axis=1))


def test_boundary_band_stays_inside_the_mask():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 0:25] = 1  # touches the left image edge
    band = boundary(mask, thickness=2)
    assert not band[mask == 0].any()
    assert band[10:12, 0:25].all() and band[10:30, 0:2].all() and band[10:30, 23:25].all()
    assert not band[12:28, 2:23].any()


def test_probability_colours_run_dark_to_bright():
    rgb = probability_rgb(np.array([[0.0, 0.5, 1.0]], np.float32))[0].astype(int)
    assert rgb[0].sum() < 30 < rgb[1].sum() < rgb[2].sum() and rgb[2].sum() > 500


def test_one_per_class_prefers_distinct_images():
    samples = {1: ["a", "b"], 2: [], 3: ["c", "d"], 4: ["c"]}
    assert eda_page.one_per_class(samples) == ["a", "d", "c"]


def test_draw_contours_rejects_a_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        draw_contours(np.zeros((10, 20), np.uint8), np.zeros((4, 10, 21), np.uint8))


# --------------------------------------------------------------------------------------------- html
def test_table_html_escapes_and_formats():
    frame = pd.DataFrame({"a<b": [0.123456, np.nan], "n": [3, 4]}, index=pd.Index(["x&y", "z"], name="k"))
    text = table_html(frame, "cap")
    assert "a&lt;b" in text and "x&amp;y" in text and "<td>0.1235</td>" in text and "<td>4</td>" in text


def test_figure_embeds_the_png_and_rejects_other_files(tmp_path):
    png = tmp_path / "f.png"
    cv2.imwrite(str(png), np.full((20, 30, 3), 200, np.uint8))
    page = HtmlPage("t")
    page.figure(png, "caption <1>")
    out = page.write(tmp_path / "out" / "report.html")
    assert png_data_uri(png) in out.read_text() and "caption &lt;1&gt;" in out.read_text()
    (tmp_path / "g.png").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="g.png: not a PNG"):
        page.figure(tmp_path / "g.png")


# --------------------------------------------------------------------------------------------- EDA
def test_eda_statistics_match_the_real_sample(sample_dir):
    labels = Labels.from_csv(sample_dir / "train_new_format.csv", sample_dir / "train_images")
    stats = eda.collect(labels)
    table = stats.class_table()
    assert table["images"].tolist() == [3, 1, 8, 1]  # README of the sample
    assert stats.classes_per_image().loc["0 classes", "images"] == 15
    assert stats.cooccurrence()[2, 3] == 1 and stats.cooccurrence()[0, 1] == 0
    index = pd.read_csv(sample_dir / "train_index_full_12568.csv").set_index("image_id")
    for c in CLASSES:
        ids = labels.table.loc[labels.table["ClassId"] == c, "ImageId"]
        assert sorted(stats.areas[c].tolist()) == sorted(index.loc[ids, f"area_class_{c}"].tolist())
        assert np.all(stats.components[c] >= 1)
    assert stats.heat.shape == (4, 64, 400)
    assert np.isclose(stats.heat[3].sum() * eda.HEAT_STEP**2, stats.areas[4].sum())


def test_eda_statistics_of_the_synthetic_set(synthetic_set, synthetic_labels):
    labels = synthetic_labels
    stats = eda.collect(labels)
    assert stats.class_table()["images"].tolist() == [synthetic_set.class_counts[c] for c in CLASSES]
    assert stats.classes_per_image().loc["0 classes", "images"] == synthetic_set.n_defect_free
    presence = labels.presence()
    both = (presence[3] & presence[4]).sum()
    assert both > 0 and stats.cooccurrence()[2, 3] == both
    for c in CLASSES:
        ids = labels.table.loc[labels.table["ClassId"] == c, "ImageId"]
        areas = [int(labels.masks(i)[c - 1].sum()) for i in ids]
        assert sorted(stats.areas[c].tolist()) == sorted(areas)
        assert np.all(stats.components[c] >= 1)
        # the heat map is the share of the class's masks covering each block: it sums to the mean area
        assert np.isclose(stats.heat[c - 1].sum() * eda.HEAT_STEP**2, np.mean(areas), rtol=1e-5)
    assert stats.heat.shape == (4, 64, 400)


def test_near_duplicate_clusters_group_a_shifted_relit_copy(synthetic_set, tmp_path):
    src = synthetic_set.out_dir / "train_images"
    in_clusters = {i for cluster in synthetic_set.clusters for i in cluster}
    names = [i for i in synthetic_set.train_ids if i not in in_clusters][:3]
    for name in names:
        (tmp_path / name).write_bytes((src / name).read_bytes())
    grey = read_grey(src / names[0]).astype(np.float32)
    copy = np.clip(np.roll(grey, 3, axis=1) * 1.03 + 2, 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "ffffffff0.jpg"), copy)
    found = eda.near_duplicate_clusters([*names, "ffffffff0.jpg"], tmp_path)
    assert found == [[names[0], "ffffffff0.jpg"]]


@pytest.fixture(scope="module")
def eda_clusters(synthetic_set) -> list[list[str]]:
    """One near-duplicate cluster of the synthetic set and one single image (not a cluster)."""
    single = next(i for i in synthetic_set.train_ids if i not in synthetic_set.clusters[0])
    return [synthetic_set.clusters[0], [single]]


@pytest.fixture(scope="module")
def eda_report(synthetic_set, synthetic_labels, eda_clusters, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda")
    settings = eda_page.EdaSettings(per_class=1)
    return eda_page.build(
        synthetic_labels, synthetic_set.out_dir / "train_images", out, eda_clusters, settings
    )


def test_eda_report_embeds_every_figure(eda_report, synthetic_set, synthetic_labels):
    page = check_written(eda_report)
    names = {p.name for p in eda_report.figures}
    assert {"class_counts.png", "cooccurrence.png", "mask_areas.png", "components.png"} <= names
    assert "positions.png" in names
    assert {f"overlays_class{c}.png" for c in (1, 2, 3, 4)} <= names and "cluster_1.png" in names
    assert "overlays.png" in names
    table = page.table("Per class")
    assert table["images"].tolist() == [str(synthetic_set.class_counts[c]) for c in CLASSES]
    n_masks = len(synthetic_labels.table)
    assert n_masks == sum(synthetic_set.class_counts.values())
    assert eda_report.summary == f"27 images, {n_masks} masks, 1 near-duplicate clusters"


def test_overlay_figure_is_full_width_with_one_row_per_image(eda_report):
    path = next(p for p in eda_report.figures if p.name == "overlays_class1.png")
    figure = cv2.imread(str(path))
    assert figure.shape[1] == 1200  # 12 in at 100 dpi
    colours = {tuple(int(v) for v in px) for px in figure.reshape(-1, 3)[::7]}
    assert (CLASS_COLOURS[1][2], CLASS_COLOURS[1][1], CLASS_COLOURS[1][0]) in colours  # BGR, drawn exactly


# --------------------------------------------------------------------------------------------- evaluation
def test_roc_matches_a_hand_computed_case():
    fpr, tpr, thresholds, auc = evaluate.roc(np.array([0.9, 0.8, 0.8, 0.3]), np.array([1, 0, 1, 0], bool))
    assert np.allclose(fpr, [0, 0, 0.5, 1]) and np.allclose(tpr, [0, 0.5, 1, 1])
    assert np.allclose(thresholds[1:], [0.9, 0.8, 0.3]) and auc == pytest.approx(0.875)
    assert np.isnan(evaluate.roc(np.array([0.1, 0.2]), np.array([True, True]))[3])


@pytest.fixture(scope="module")
def oof_dir(synthetic_labels, tmp_path_factory):
    return write_noisy_oof(synthetic_labels, tmp_path_factory.mktemp("oof") / "fold0", has_cls=True)


@pytest.fixture(scope="module")
def expected_score(oof_dir):
    """metric.score of the rules applied image by image, computed here independently of `report`."""
    oof = read_oofs([oof_dir])
    rows = []
    for image_id in oof.image_ids:
        masks = apply(oof.probs(image_id), RULES, oof.cls_of(image_id))
        rows += [(image_id, k + 1, rle.encode(m)) for k, m in enumerate(masks)]
    pred = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    return metric.score(oof.truth.table, pred, oof.image_ids)


@pytest.fixture(scope="module")
def evaluation(oof_dir):
    return evaluate.collect(read_oofs([oof_dir]), RULES, CURVE_THRESHOLDS)


def test_evaluation_tables_are_metric_numbers(evaluation, expected_score):
    s = expected_score
    assert evaluation.score.mean_dice == s.mean_dice and 0.3 < s.mean_dice < 0.99
    table = evaluation.class_table()
    for c in (1, 2, 3, 4):
        assert table.loc[f"class {c}", "Dice"] == s.per_class[c]
        assert table.loc[f"class {c}", "Dice non-empty truth"] == s.nonempty_truth.per_class[c]
    loss = evaluation.loss_table()
    assert loss.loc["all", "total lost"] == pytest.approx(1 - s.mean_dice, abs=1e-12)
    parts = loss[["lost to FP", "lost to FN", "lost to partial"]].sum(axis=1)
    assert np.allclose(parts, loss["total lost"])
    assert loss.loc["all", "FP pairs"] > 0
    presence = evaluation.presence_table()
    assert presence[["TP", "FP", "FN", "TN"]].sum(axis=1).eq(27).all()


def test_curves_pass_through_the_rule_in_use(evaluation, expected_score):
    for c, (x, y) in evaluation.threshold_curves().items():
        rule = RULES.classes[c - 1]
        assert y[list(x).index(rule.pixel_threshold)] == pytest.approx(expected_score.per_class[c], abs=1e-12)
    for c, (x, y) in evaluation.component_curves().items():
        rule = RULES.classes[c - 1]
        assert y[list(x).index(rule.min_component)] == pytest.approx(expected_score.per_class[c], abs=1e-12)
        assert np.all(np.diff(x) > 0)


def test_worst_pairs_are_the_lowest_dice(evaluation):
    pairs = evaluation.score.pairs
    for c in (1, 3):
        worst = evaluation.worst(c, 2)
        dice = pairs.loc[(pairs["ClassId"] == c) & (pairs["dice"] < 1), "dice"].sort_values()
        assert worst["dice"].tolist() == dice.head(2).tolist()


def test_two_workers_evaluate_exactly_as_one(tmp_path, monkeypatch):
    """A synthetic 24 x 40 OOF (no ../shared): every number of the evaluation is the same with 2 workers."""
    truth, values, cls = small_case(np.random.default_rng(21), n=11)
    oof = read_oofs([write_small_oof(tmp_path / "oof", truth, values, cls)])
    rules = Rules(
        (
            ClassRule(1, 0.45, 3, 0, 0.3),
            ClassRule(2, 0.5, 0, 10, 0.0),
            ClassRule(3, 0.55, 5, 20, 0.5),
            ClassRule(4),
        )
    )
    monkeypatch.setattr(tune, "CHUNK_IMAGES", 2)  # 6 chunks over 2 workers
    one, two = (evaluate.collect(oof, rules, CURVE_THRESHOLDS, workers) for workers in (1, 2))
    assert one.score.n_images == 11 and 0 < one.score.mean_dice < 1
    for name in ("score", "empty_baseline"):
        assert getattr(two, name).to_dict() == getattr(one, name).to_dict()
        pd.testing.assert_frame_equal(getattr(two, name).pairs, getattr(one, name).pairs)
    pd.testing.assert_frame_equal(two.gate, one.gate)
    assert two.gate_source == one.gate_source == "classifier"
    assert_stats_equal(two.curve_stats, one.curve_stats)
    pd.testing.assert_frame_equal(two.loss_table(), one.loss_table())


@pytest.fixture(scope="module")
def eval_report(evaluation, oof_dir, synthetic_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    settings = eval_page.EvalSettings(worst=1)
    oof = read_oofs([oof_dir])
    images = synthetic_set.out_dir / "train_images"
    return eval_page.render(evaluation, oof, out, images, settings, "test rules")


def test_eval_report_tables_match_metric(eval_report, expected_score):
    page = check_written(eval_report)
    names = {p.name for p in eval_report.figures}
    assert {"dice_lost.png", "roc.png", "dice_vs_threshold.png", "dice_vs_min_component.png"} <= names
    assert "worst_class1.png" in names
    s = expected_score
    table = page.table("Dice per class")
    for c in (1, 2, 3, 4):
        assert table.loc[f"class {c}", "Dice"] == f"{s.per_class[c]:.4f}"
        empty = s.empty_truth.per_class[c]
        assert table.loc[f"class {c}", "Dice empty truth"] == ("" if empty is None else f"{empty:.4f}")
        assert table.loc[f"class {c}", "pairs non-empty truth"] == str(s.nonempty_truth.n_per_class[c])
    assert table.loc["all", "Dice"] == f"{s.mean_dice:.4f}"
    loss = page.table("Dice lost")
    assert loss.loc["all", "total lost"] == f"{1 - s.mean_dice:.4f}"
    presence = page.table("Predicted non-empty")
    pairs = s.pairs
    for c in (1, 2, 3, 4):
        p = pairs[pairs["ClassId"] == c]
        tp = int(((p["truth_area"] > 0) & (p["pred_area"] > 0)).sum())
        fp = int(((p["truth_area"] == 0) & (p["pred_area"] > 0)).sum())
        assert presence.loc[f"class {c}", ["TP", "FP"]].tolist() == [str(tp), str(fp)]
    worst = page.table("Class 1: worst pairs")
    low = pairs[(pairs["ClassId"] == 1) & (pairs["dice"] < 1)].sort_values("dice").iloc[0]
    assert worst.index[0] == low["ImageId"] and worst.iloc[0]["dice"] == f"{low['dice']:.4f}"
    assert eval_report.summary.startswith(f"mean Dice {s.mean_dice:.4f} on 27 images")


# --------------------------------------------------------------------------------------------- CLI
def test_report_is_a_steel_seg_command():
    assert "report" in COMMANDS


def test_cli_eval_names_a_bad_thresholds_file(oof_dir, tmp_path, capsys):
    bad = tmp_path / "thresholds.json"
    bad.write_text('{"classes": [{"class_id": 1}]}')
    args = ["report", "eval", "--oof", str(oof_dir), "--thresholds", str(bad)]
    assert run_report_cli([*args, "--out", str(tmp_path)]) == 2
    assert f"{bad}: invalid post-processing rules" in capsys.readouterr().err


def test_cli_eda_names_a_missing_images_folder(synthetic_set, tmp_path, capsys):
    train_csv = synthetic_set.out_dir / "train.csv"
    args = ["report", "eda", "--train-csv", str(train_csv), "--images", str(tmp_path / "none")]
    assert run_report_cli([*args, "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'none'}" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_eda_on_a_synthetic_set_finds_its_clusters(synthetic_set, tmp_path, capsys):
    made = synthetic_set
    assert made.clusters
    out = tmp_path / "report"
    args = ["--train-csv", str(made.out_dir / "train.csv"), "--images", str(made.out_dir / "train_images")]
    assert run_report_cli(["report", "eda", *args, "--out", str(out), "--per-class", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(made.clusters)} near-duplicate clusters; wrote {out / 'report.html'}" in printed
    assert eda.near_duplicate_clusters(made.train_ids, made.out_dir / "train_images") == eda.multi_member(
        made.clusters
    )
    assert (out / "cluster_1.png").is_file()


@pytest.mark.slow
def test_cli_eval_with_two_oof_folds(synthetic_labels, tmp_path, capsys):
    labels = synthetic_labels
    assert len(labels.image_ids) == 27
    dirs = []
    for fold, ids in enumerate((labels.image_ids[:14], labels.image_ids[14:])):
        sub = Labels(labels.table[labels.table["ImageId"].isin(ids)], ids)
        writer = OOFWriter(tmp_path / f"f{fold}", source="test", fold=fold, has_cls=False)
        for image_id in ids:
            writer.add(image_id, np.clip(sub.masks(image_id) * 0.8 + 0.1, 0, 1).astype(np.float32))
        dirs.append(writer.close(sub))
    thresholds = RULES.save(tmp_path / "thresholds.json")
    args = ["report", "eval", "--oof", str(dirs[0]), "--oof", str(dirs[1]), "--thresholds", str(thresholds)]
    assert run_report_cli([*args, "--out", str(tmp_path / "out"), "--worst", "1"]) == 0
    out = capsys.readouterr().out
    assert "on 27 images" in out and (tmp_path / "out" / "report.html").is_file()
