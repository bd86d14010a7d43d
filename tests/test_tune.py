"""Threshold search: exact against brute force over the grid, and reproduced by postprocess + metric."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_oof import TEST_ORIGIN, write_oof

from steel_seg.cli import main as cli_main
from steel_seg.competition import CLASSES, N_CLASSES, TIDY_COLUMNS
from steel_seg.formats import metric, rle
from steel_seg.formats.labels import Labels
from steel_seg.formats.oof import OOFWriter, dequantise, quantise, read_oof, read_oofs
from steel_seg.postprocess import tune
from steel_seg.postprocess.rules import ClassRule, Rules, apply, value_cuts
from steel_seg.postprocess.tune import (
    TIE_BREAK,
    ClassStats,
    Grid,
    Stats,
    StatsCollector,
    chunk_ranges,
    collect_stats,
    image_dice,
    middle_of_ties,
    score_class,
    search,
    search_class,
)

H, W = 24, 40
SMALL_GRID = Grid(
    pixel_thresholds=(0.3, 0.6),
    min_components=(0, 4, 9),
    min_areas=(0, 10, 30),
    gates=(0.0, 0.5, 0.8),
    seg_gates=(0.0, 0.5, 0.8),
)


def small_case(rng: np.random.Generator, n: int = 24):
    """n images of (4, H, W): random blob truths (some empty) and noisy uint8 probability values."""
    truth = np.zeros((n, N_CLASSES, H, W), np.uint8)
    for i, k in itertools.product(range(n), range(N_CLASSES)):
        if rng.random() < 0.4:
            r, c = rng.integers(0, H - 6), rng.integers(0, W - 10)
            truth[i, k, r : r + rng.integers(2, 7), c : c + rng.integers(2, 11)] = 1
    noise = rng.random((n, N_CLASSES, H, W)) ** 4
    values = quantise((0.7 * truth + 0.8 * noise).astype(np.float32))
    cls = rng.random((n, N_CLASSES)).astype(np.float32)
    return truth, values, cls


def write_small_oof(
    path: Path, truth, values, cls, first: int = 0, fold: int = 0, origin=TEST_ORIGIN
) -> Path:
    """An OOF dir of `small_case` images (ids `first`.jpg onwards) written with OOFWriter."""
    ids = [f"{first + n:04d}.jpg" for n in range(len(values))]
    rows = [
        (i, c, rle.encode(m))
        for i, masks in zip(ids, truth, strict=True)
        for c, m in zip(CLASSES, masks, strict=True)
        if m.any()
    ]
    labels = Labels(pd.DataFrame(rows, columns=list(TIDY_COLUMNS)), ids, (H, W))
    writer = OOFWriter(path, source="test", fold=fold, has_cls=cls is not None, origin=origin)
    for n, image_id in enumerate(ids):
        writer.add(image_id, dequantise(values[n]), None if cls is None else cls[n])
    return writer.close(labels)


def assert_stats_equal(got: Stats, expected: Stats) -> None:
    """Every field, array values and dtypes alike."""
    assert (got.thresholds, got.one_class_per_pixel) == (expected.thresholds, expected.one_class_per_pixel)
    assert got.image_ids == expected.image_ids
    for g, e in zip(got.classes, expected.classes, strict=True):
        for name in ("truth_area", "image_score", "seg_score"):
            a, b = getattr(g, name), getattr(e, name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        for name in ("sizes", "overlaps", "counts"):
            for a, b in zip(getattr(g, name), getattr(e, name), strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def brute_force(truth, values, cls, grid: Grid) -> np.ndarray:
    """(4, T, C, A, G, S) mean Dice by running apply for every grid point."""
    axes = (grid.pixel_thresholds, grid.min_components, grid.min_areas, grid.gates, grid.seg_gates)
    out = np.zeros((4, *map(len, axes)))
    probs = dequantise(values)
    for idx in itertools.product(*(range(len(a)) for a in axes)):
        point = [a[i] for a, i in zip(axes, idx, strict=True)]
        rules = Rules(tuple(ClassRule(k + 1, *point) for k in range(4)), grid.one_class_per_pixel)
        for n in range(len(values)):
            pred = apply(probs[n], rules, None if cls is None else cls[n])
            for k in range(4):
                out[(k, *idx)] += dice(pred[k], truth[n, k]) / len(values)
    return out


def collect(truth, values, cls, one_class_per_pixel):
    collector = StatsCollector(SMALL_GRID.pixel_thresholds, one_class_per_pixel)
    for n in range(len(values)):
        collector.add(f"{n:04d}.jpg", values[n], truth[n], None if cls is None else cls[n])
    return collector.finish()


def test_value_cuts_reproduce_the_float32_comparison():
    values = np.arange(256, dtype=np.uint8)
    thresholds = [0.0, 0.1, 0.3, 0.5, 0.55, 0.6, 0.7, 1 / 3, 128 / 255, 0.999, 1.0]
    for t, cut in zip(thresholds, value_cuts(thresholds), strict=True):
        np.testing.assert_array_equal(values > cut, dequantise(values) > np.float32(t))


@pytest.mark.parametrize("with_cls", [False, True])
@pytest.mark.parametrize("one_class_per_pixel", [False, True])
def test_scores_equal_brute_force_postprocess_on_every_grid_point(with_cls, one_class_per_pixel):
    truth, values, cls = small_case(np.random.default_rng(7))
    cls = cls if with_cls else None
    grid = dataclasses.replace(SMALL_GRID, one_class_per_pixel=one_class_per_pixel)
    stats = collect(truth, values, cls, one_class_per_pixel)
    expected = brute_force(truth, values, cls, grid)
    for k in range(4):
        np.testing.assert_allclose(
            score_class(stats.classes[k], stats.thresholds, grid), expected[k], rtol=0, atol=1e-12
        )
    for k, result in enumerate(search(stats, grid)):
        assert result.after == pytest.approx(expected[k].max(), abs=1e-12)
        assert result.before == pytest.approx(expected[(k, 1, 0, 0, 0, 0)], abs=1e-12)  # 0.5 / 0 / 0 / 0 / 0


def test_grid_always_holds_the_defaults_sorted():
    grid = Grid(
        pixel_thresholds=(0.7, 0.3), min_components=(100,), min_areas=(600,), gates=(0.6,), seg_gates=()
    )
    assert grid.pixel_thresholds == (0.3, 0.5, 0.7) and grid.min_components == (0, 100)
    assert grid.min_areas == (0, 600) and grid.gates == (0.0, 0.6) and grid.size() == 24
    assert grid.seg_gates == (0.0,)
    with pytest.raises(ValueError, match="pixel_thresholds"):
        Grid(pixel_thresholds=(1.5,))


def test_ties_choose_the_middle_grid_point_and_thresholds_must_match():
    collector = StatsCollector(SMALL_GRID.pixel_thresholds)
    for n in range(3):
        collector.add(f"{n}.jpg", np.zeros((4, H, W), np.uint8), np.zeros((4, H, W), np.uint8), None)
    stats = collector.finish()
    for result in search(stats, SMALL_GRID):  # every point scores 1: the middle of every axis
        assert (result.before, result.after) == (1.0, 1.0)
        rule = result.rule
        # no image-level score: the gate is not searched, the seg gate takes the middle of its axis
        assert (rule.pixel_threshold, rule.min_component, rule.min_area) == (0.5, 4, 10)
        assert (rule.gate, rule.seg_gate) == (0.0, 0.5)
    with pytest.raises(ValueError, match="statistics were taken at"):
        search(stats, Grid(pixel_thresholds=(0.2,)))


def test_middle_of_ties_single_point_box_and_staircase():
    tied = np.zeros((5, 8), bool)
    tied[3, 6] = True
    assert middle_of_ties(tied) == (3, 6)  # no tie: the one best point
    tied[1:4, 2:6] = True  # a box: rows 1..3 (odd: 2), columns 2..5 (even: the lower middle, 3)
    tied[3, 6] = False
    assert middle_of_ties(tied) == (2, 3)
    stairs = np.zeros((3, 3), bool)
    stairs[0, :] = stairs[:, 2] = True  # per-axis medians (1, 1) are not tied: row 1 first, then its column
    assert middle_of_ties(stairs) == (1, 2)
    gaps = np.zeros(9, bool)
    gaps[[0, 1, 7]] = True  # the middle of a gapped range is the median tied value, not the centre index 4
    assert middle_of_ties(gaps) == (1,)
    with pytest.raises(ValueError, match="no tied point"):
        middle_of_ties(np.zeros((2, 2), bool))


def test_middle_of_ties_always_returns_a_tied_point():
    rng = np.random.default_rng(3)
    for density in (0.01, 0.1, 0.5, 0.9):
        for _ in range(50):
            tied = rng.random((3, 4, 5, 2)) < density
            tied.flat[rng.integers(tied.size)] = True
            assert tied[middle_of_ties(tied)]


def test_search_class_takes_the_middle_of_a_hand_made_tied_range():
    """Image 0: truth 20 px, one exact 20 px component at thresholds 0.3 and 0.5, 12 px inside it at 0.6;
    gate score 0.9. Image 1: empty truth, a 3 px false positive at 0.3 only; gate score 0.6.
    Mean Dice 1 exactly when t in {0.3, 0.5}, min_area in {0, 10} (image 0 kept) and the false positive goes
    (t = 0.5, or min_component 4 / 9, or min_area 10, or gate 0.8)."""
    i32 = np.int32
    stats = ClassStats(
        truth_area=np.array([20, 0], np.int64),
        image_score=np.array([0.9, 0.6], np.float32),
        seg_score=np.array([0.9, 0.6], np.float32),
        sizes=[np.array([20, 3], i32), np.array([20], i32), np.array([12], i32)],
        overlaps=[np.array([20, 0], i32), np.array([20], i32), np.array([12], i32)],
        counts=[np.array([1, 1], i32), np.array([1, 0], i32), np.array([1, 0], i32)],
    )
    thresholds = SMALL_GRID.pixel_thresholds
    assert thresholds == (0.3, 0.5, 0.6)
    t, c, a, g, s = np.indices((3, 3, 3, 3, 3))
    expected_tied = (t < 2) & (a < 2) & ((t == 1) | (c >= 1) | (a == 1) | (g == 2) | (s == 2))
    scores = score_class(stats, thresholds, SMALL_GRID)
    np.testing.assert_array_equal(scores == 1.0, expected_tied)
    assert scores[~expected_tied].max() <= 0.875
    result = search_class(stats, thresholds, SMALL_GRID, 2)
    # threshold: tied {0.3, 0.5} -> lower middle 0.3; at 0.3, min_component tied {0, 4, 9} -> 4;
    # at (0.3, 4) min_area {0, 10} -> 0; then gate {0, 0.5, 0.8} -> 0.5, seg_gate likewise
    assert result.rule == ClassRule(2, 0.3, 4, 0, 0.5, 0.5)
    assert (result.before, result.after) == (1.0, 1.0)


def test_chunk_ranges_cover_every_image_once_in_order(monkeypatch):
    monkeypatch.setattr(tune, "CHUNK_IMAGES", 4)
    for n, workers in itertools.product((0, 1, 5, 9, 24), (1, 2, 3, 16)):
        ranges = chunk_ranges(n, workers)
        assert [i for r in ranges for i in r] == list(range(n))
        assert all(0 < len(r) <= 4 for r in ranges) or (n == 0 and ranges == [range(0)])
        assert len(ranges) >= min(n, workers)


def test_concatenated_chunk_statistics_equal_one_collector():
    truth, values, cls = small_case(np.random.default_rng(5), n=10)
    whole = collect(truth, values, cls, True)
    parts = []
    for r in (range(0, 3), range(3, 4), range(4, 10)):
        collector = StatsCollector(SMALL_GRID.pixel_thresholds, True)
        for n in r:
            collector.add(f"{n:04d}.jpg", values[n], truth[n], cls[n])
        parts.append(collector.finish())
    assert_stats_equal(Stats.concat(parts), whole)
    with pytest.raises(ValueError, match="cannot join"):
        Stats.concat([parts[0], collect(truth, values, cls, False)])
    with pytest.raises(ValueError, match="no statistics"):
        Stats.concat([])


@pytest.mark.parametrize("with_cls", [False, True])
def test_two_workers_collect_the_statistics_of_one(tmp_path, monkeypatch, with_cls):
    truth, values, cls = small_case(np.random.default_rng(11), n=13)
    cls, one_class_per_pixel = (cls, True) if with_cls else (None, False)
    oof = read_oofs([write_small_oof(tmp_path / "oof", truth, values, cls)])
    monkeypatch.setattr(tune, "CHUNK_IMAGES", 3)  # 5 chunks over 2 workers, finishing in any order
    two = collect_stats(oof, SMALL_GRID.pixel_thresholds, one_class_per_pixel, workers=2)
    one = collect_stats(oof, SMALL_GRID.pixel_thresholds, one_class_per_pixel, workers=1)
    assert_stats_equal(two, one)
    assert_stats_equal(one, collect(truth, values, cls, one_class_per_pixel))


def test_tune_cli_thresholds_are_byte_identical_for_one_and_two_workers(tmp_path, monkeypatch):
    truth, values, cls = small_case(np.random.default_rng(12), n=20)
    dirs = [
        write_small_oof(tmp_path / "f0", truth[:11], values[:11], None),
        write_small_oof(tmp_path / "f1", truth[11:], values[11:], None, first=11, fold=1),
    ]
    monkeypatch.setattr(tune, "CHUNK_IMAGES", 4)
    grid = [
        "--pixel-thresholds",
        "0.3,0.6",
        "--min-components",
        "4,9",
        "--min-areas",
        "10,30",
        "--gates",
        "0.5,0.8",
    ]
    written = []
    for workers in (1, 2):
        out = tmp_path / f"thresholds_{workers}.json"
        args = ["--oof", str(dirs[0]), "--oof", str(dirs[1]), "--out", str(out), "--workers", str(workers)]
        assert tune_command([*args, *grid]) == 0
        written.append(out.read_bytes())
    assert written[0] == written[1]


def tune_command(argv: list[str]) -> int:
    """Run `steel-seg tune argv` (the CLI imports only the chosen subcommand)."""
    return cli_main(["tune", *argv])


def predictions(oof, rules: Rules) -> pd.DataFrame:
    rows = []
    for image_id in oof.image_ids:
        masks = apply(oof.probs(image_id), rules, oof.cls_of(image_id))
        rows += [(image_id, k + 1, rle.encode(m)) for k, m in enumerate(masks) if m.any()]
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


@pytest.mark.slow
def test_tune_cli_dice_is_reproduced_by_postprocess_and_metric(tmp_path, synthetic_labels, capsys):
    labels = synthetic_labels
    write_oof(tmp_path / "f0", labels, labels.image_ids[:14], seed=1)
    write_oof(tmp_path / "f1", labels, labels.image_ids[14:], seed=2, fold=1)
    out = tmp_path / "thresholds.json"
    args = [
        "--oof",
        str(tmp_path / "f0"),
        "--oof",
        str(tmp_path / "f1"),
        "--out",
        str(out),
        "--pixel-thresholds",
        "0.4,0.6",
        "--min-components",
        "100,400",
        "--min-areas",
        "500,1500",
        "--gates",
        "0.6,0.8",
    ]
    assert tune_command(args) == 0
    assert "mean OOF Dice" in capsys.readouterr().out
    rules = Rules.load(out)
    tuning = rules.tuning
    assert tuning["n_images"] == len(labels.image_ids) == 27 and len(tuning["oof_dirs"]) == 2
    assert tuning["tie_break"] == TIE_BREAK
    assert tuning["gate_source"] == "max pixel probability"
    oof_f0, oof_f1 = read_oof(tmp_path / "f0"), read_oof(tmp_path / "f1")
    truth = labels.table
    for key, applied in (("dice_before", Rules()), ("dice_after", rules)):
        pred = pd.concat([predictions(oof_f0, applied), predictions(oof_f1, applied)])
        scored = metric.score(truth, pred, labels.image_ids)
        assert scored.mean_dice == pytest.approx(tuning[key]["mean"], abs=1e-12)
        for k in range(1, 5):
            assert scored.per_class[k] == pytest.approx(tuning[key]["per_class"][str(k)], abs=1e-12)
    assert tuning["dice_after"]["mean"] > tuning["dice_before"]["mean"]


def test_tune_cli_reports_bad_oof_dir_and_worker_count(tmp_path, capsys):
    assert tune_command(["--oof", str(tmp_path), "--out", str(tmp_path / "t.json")]) == 2
    assert "meta.json" in capsys.readouterr().err
    truth, values, _ = small_case(np.random.default_rng(1), n=2)
    oof = write_small_oof(tmp_path / "oof", truth, values, None)
    assert tune_command(["--oof", str(oof), "--out", str(tmp_path / "t.json"), "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err


def two_folds(tmp_path: Path, second_origin=TEST_ORIGIN) -> list[str]:
    """Folds 0 and 1 of `small_case` images as two OOF dirs; the second with `second_origin`."""
    truth, values, cls = small_case(np.random.default_rng(4), n=8)
    first = write_small_oof(tmp_path / "f0", truth[:4], values[:4], cls[:4])
    second = write_small_oof(
        tmp_path / "f1", truth[4:], values[4:], cls[4:], first=4, fold=1, origin=second_origin
    )
    return ["--oof", str(first), "--oof", str(second), "--out", str(tmp_path / "t.json")]


def test_tune_refuses_oof_dirs_of_two_folds_files_unless_allowed(tmp_path, capsys):
    args = two_folds(tmp_path, dataclasses.replace(TEST_ORIGIN, folds_sha256="e" * 64))
    assert tune_command(args) == 2
    err = capsys.readouterr().err
    assert f"not out of one folds.csv (sha256 {tmp_path / 'f0'}: ffffffffffff...; " in err
    assert f"{tmp_path / 'f1'}: eeeeeeeeeeee...)" in err and not (tmp_path / "t.json").exists()
    assert tune_command([*args, "--allow-mixed"]) == 0
    assert Rules.load(tmp_path / "t.json").tuning["folds"] == {
        "sha256": None,
        "n_folds": None,
        "tuned": [0, 1],
    }


def test_tune_refuses_oof_dirs_without_a_folds_record(tmp_path, capsys):
    assert tune_command(two_folds(tmp_path, dataclasses.replace(TEST_ORIGIN, folds_sha256=None))) == 2
    assert f"{tmp_path / 'f1'}: none recorded" in capsys.readouterr().err


def test_tune_refuses_part_of_the_folds_unless_allowed(tmp_path, capsys):
    truth, values, cls = small_case(np.random.default_rng(4), n=4)
    oof = write_small_oof(tmp_path / "f0", truth, values, cls)  # fold 0 of a 2-fold folds.csv
    args = ["--oof", str(oof), "--out", str(tmp_path / "t.json")]
    assert tune_command(args) == 2
    assert "cover folds [0] of the 2 in their folds.csv, not [1]" in capsys.readouterr().err
    assert tune_command([*args, "--allow-partial-folds"]) == 0
    tuning = Rules.load(tmp_path / "t.json").tuning
    assert tuning["folds"] == {"sha256": "f" * 64, "n_folds": 2, "tuned": [0]}
    assert list(tuning["dice_after_per_fold"]) == ["0"]


def test_both_gates_are_searched_together_and_must_both_clear():
    """Image 0 carries the defect: classifier 0.9, max pixel 0.9. Image 1 is clean but the classifier says
    0.9 (max pixel 0.4); image 2 is clean, max pixel 0.9 but the classifier 0.2. Only gate 0.5 AND seg gate
    0.6 together clear both false positives."""
    i32 = np.int32
    stats = ClassStats(
        truth_area=np.array([20, 0, 0], np.int64),
        image_score=np.array([0.9, 0.9, 0.2], np.float32),
        seg_score=np.array([0.9, 0.4, 0.9], np.float32),
        sizes=[np.array([20, 30, 30], i32)],
        overlaps=[np.array([20, 0, 0], i32)],
        counts=[np.array([1, 1, 1], i32)],
    )
    grid = Grid(pixel_thresholds=(0.5,), min_components=(), min_areas=(), gates=(0.5,), seg_gates=(0.6,))
    scores = score_class(stats, (0.5,), grid)[0, 0, 0]  # (gate, seg_gate)
    np.testing.assert_allclose(scores, [[1 / 3, 2 / 3], [2 / 3, 1.0]])
    rule = search_class(stats, (0.5,), grid, 1).rule
    assert (rule.gate, rule.seg_gate) == (0.5, 0.6)
    np.testing.assert_array_equal(image_dice(stats, (0.5,), rule), [1.0, 1.0, 1.0])
