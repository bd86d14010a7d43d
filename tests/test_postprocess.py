"""Post-processing rules on hand-built probability maps: each rule alone, combined, and the edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from steel_seg.postprocess.rules import (
    ClassRule,
    Rules,
    apply,
    bounding_box,
    drop_small_components,
    filter_masks,
    gate_scores,
    threshold,
)

H, W = 32, 48


def rules_for(k: int = 0, one_class_per_pixel: bool = False, **rule) -> Rules:
    """Default rules except class k+1, which gets `rule`."""
    classes = [ClassRule(i + 1, **(rule if i == k else {})) for i in range(4)]
    return Rules(tuple(classes), one_class_per_pixel)


def probs_with(*blocks: tuple[int, slice, slice, float]) -> np.ndarray:
    """(4, H, W) float32 zeros with rectangles (class index, rows, cols, value)."""
    probs = np.zeros((4, H, W), np.float32)
    for k, rows, cols, value in blocks:
        probs[k, rows, cols] = value
    return probs


def test_default_rules_threshold_is_strictly_greater_than_at_the_oof_resolution():
    """Probabilities are read as OOF dirs store them (the nearest 1/255): 127/255 and 0.4995 (-> 127) are
    not above 0.5; 128/255 and 0.5 itself (127.5 rounds half to even: 128) are."""
    below = probs_with((0, slice(0, 2), slice(0, 2), 127 / 255), (1, slice(0, 2), slice(0, 2), 0.4995))
    above = probs_with((0, slice(0, 2), slice(0, 2), 128 / 255), (1, slice(0, 2), slice(0, 2), 0.5))
    out = apply(below, Rules())
    assert out.dtype == np.uint8 and out.shape == (4, H, W)
    assert out[0].sum() == 0 and out[1].sum() == 0
    out = apply(above, Rules())
    assert out[0].sum() == 4 and out[1].sum() == 4


def test_all_below_threshold_gives_empty_masks():
    probs = np.full((4, H, W), 0.3, np.float32)
    assert apply(probs, rules_for(pixel_threshold=0.3)).sum() == 0


def test_pixel_threshold_per_class():
    probs = np.full((4, H, W), 0.6, np.float32)
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=t) for k, t in enumerate([0.5, 0.7, 0.59, 0.6])))
    assert apply(probs, rules).reshape(4, -1).sum(1).tolist() == [H * W, 0, H * W, 0]


def test_min_component_keeps_component_exactly_at_the_limit():
    probs = probs_with((0, slice(0, 3), slice(0, 3), 0.9), (0, slice(10, 12), slice(10, 14), 0.9))
    out = apply(probs, rules_for(min_component=9))
    assert out[0, 0:3, 0:3].all() and out[0].sum() == 9
    assert apply(probs, rules_for(min_component=10))[0].sum() == 0
    assert apply(probs, rules_for(min_component=8))[0].sum() == 17


def test_components_are_8_connected_through_diagonals():
    probs = np.zeros((4, H, W), np.float32)
    idx = np.arange(5)
    probs[0, idx, idx] = 0.9  # a diagonal line: one 8-connected component of 5 pixels
    assert apply(probs, rules_for(min_component=5))[0].sum() == 5
    assert apply(probs, rules_for(min_component=6))[0].sum() == 0


def test_min_area_clears_the_class_below_and_keeps_it_at_the_limit():
    probs = probs_with((2, slice(0, 4), slice(0, 5), 0.9))
    assert apply(probs, rules_for(2, min_area=20))[2].sum() == 20
    assert apply(probs, rules_for(2, min_area=21))[2].sum() == 0


def test_min_area_counts_the_area_left_after_the_component_filter():
    probs = probs_with((0, slice(0, 4), slice(0, 4), 0.9), (0, slice(20, 22), slice(20, 22), 0.9))
    assert apply(probs, rules_for(min_area=20))[0].sum() == 20
    assert apply(probs, rules_for(min_component=5, min_area=20))[0].sum() == 0
    assert apply(probs, rules_for(min_component=5, min_area=16))[0].sum() == 16


def test_gate_from_max_pixel_probability_at_the_limit():
    probs = probs_with((3, slice(0, 4), slice(0, 4), 0.6))
    assert apply(probs, rules_for(3, gate=0.6))[3].sum() == 16
    assert apply(probs, rules_for(3, gate=0.61))[3].sum() == 0


def test_gate_from_classifier_overrides_max_probability():
    probs = probs_with((1, slice(0, 4), slice(0, 4), 0.9))
    cls = np.array([0.0, 0.2, 0.0, 0.0], np.float32)
    assert apply(probs, rules_for(1, gate=0.2), cls)[1].sum() == 16
    assert apply(probs, rules_for(1, gate=0.21), cls)[1].sum() == 0
    assert apply(probs, rules_for(1, gate=0.21))[1].sum() == 16


def test_one_class_per_pixel_keeps_the_argmax_class_only():
    probs = probs_with((0, slice(0, 4), slice(0, 8), 0.7), (1, slice(0, 4), slice(4, 12), 0.8))
    plain = apply(probs, Rules())
    assert plain[0].sum() == 32 and plain[1].sum() == 32
    argmax = apply(probs, Rules(one_class_per_pixel=True))
    assert argmax[0].sum() == 16 and argmax[1].sum() == 32
    assert not (argmax.sum(0) > 1).any()


def test_one_class_per_pixel_ties_go_to_the_first_class():
    probs = probs_with((0, slice(0, 2), slice(0, 2), 0.7), (2, slice(0, 2), slice(0, 2), 0.7))
    out = apply(probs, Rules(one_class_per_pixel=True))
    assert out[0].sum() == 4 and out[2].sum() == 0


def test_rules_combined():
    probs = probs_with(
        (0, slice(0, 10), slice(0, 10), 0.8),  # big, kept
        (0, slice(20, 22), slice(20, 22), 0.8),  # small component, dropped
        (0, slice(25, 30), slice(30, 40), 0.55),  # below this class's threshold
        (1, slice(0, 10), slice(0, 10), 0.8),  # big enough component but class area too small
        (2, slice(0, 10), slice(0, 10), 0.65),  # gate not reached
    )
    rules = Rules(
        (
            ClassRule(1, pixel_threshold=0.6, min_component=5, min_area=50, gate=0.7),
            ClassRule(2, pixel_threshold=0.6, min_component=5, min_area=101, gate=0.7),
            ClassRule(3, pixel_threshold=0.6, min_component=5, min_area=50, gate=0.7),
            ClassRule(4),
        )
    )
    out = apply(probs, rules)
    assert out[0].sum() == 100 and out[0, :10, :10].all()
    assert out[1:].sum() == 0


def test_apply_equals_threshold_then_filter_masks_and_batch_equals_single():
    rng = np.random.default_rng(3)
    probs = rng.random((3, 4, H, W), dtype=np.float32) ** 3
    cls = rng.random((3, 4), dtype=np.float32)
    rules = Rules(tuple(ClassRule(k + 1, 0.3 + 0.1 * k, 3, 10, 0.2) for k in range(4)), True)
    for c in (None, cls):
        masks, scores = threshold(probs, rules), gate_scores(probs, c)  # batched, as the engine runs them
        batch = [filter_masks(m, rules, s) for m, s in zip(masks, scores, strict=True)]
        for n in range(3):
            one = apply(probs[n], rules, None if c is None else c[n])
            split = filter_masks(
                threshold(probs[n], rules),
                rules,
                gate_scores(probs[n], None if c is None else c[n]),
            )
            np.testing.assert_array_equal(batch[n], one)
            np.testing.assert_array_equal(split, one)


def test_component_filter_matches_a_per_component_reference():
    rng = np.random.default_rng(5)
    mask = (rng.random((H, W)) > 0.6).astype(np.uint8)
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    expected = np.zeros_like(mask)
    for c in range(1, n):
        component = labels == c
        if component.sum() >= 4:
            expected[component] = 1
    np.testing.assert_array_equal(drop_small_components(mask, 4), expected)


def test_rules_round_trip_and_loaded_errors_name_the_file(tmp_path):
    rules = Rules(
        tuple(ClassRule(k + 1, 0.55, 150, a, 0.6) for k, a in enumerate([600, 600, 900, 2000])),
        True,
        {"grid": "x"},
        "a note",
    )
    path = rules.save(tmp_path / "t.json")
    loaded = Rules.load(path)
    assert loaded == rules and loaded.tuning == {"grid": "x"} and loaded.note == "a note"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": [{"class_id": 1, "pixel_threshold": 2.0}]}))
    with pytest.raises(ValueError, match="bad.json"):
        Rules.load(bad)


def test_rules_need_four_classes_in_order():
    with pytest.raises(ValueError, match="class_id"):
        Rules((ClassRule(2), ClassRule(1), ClassRule(3), ClassRule(4)))


def test_committed_default_thresholds_load():
    rules = Rules.load(Path(__file__).resolve().parents[1] / "weights" / "thresholds.json")
    assert len(rules.classes) == 4 and rules.note


def test_component_filter_on_local_blobs_and_image_corners():
    mask = np.zeros((H, W), np.uint8)
    mask[10:13, 20:23] = 1  # 9 px, mid-image
    mask[H - 2 :, W - 3 :] = 1  # 6 px, bottom-right corner
    mask[0, 0] = 1  # 1 px, top-left corner
    assert bounding_box(mask) == (slice(0, H), slice(0, W))
    assert bounding_box(np.zeros((H, W), np.uint8)) is None
    out = drop_small_components(mask, 6)
    assert out.sum() == 15 and out[0, 0] == 0 and out[H - 1, W - 1] == 1
    local = np.zeros((H, W), np.uint8)
    local[5:8, 30:32] = 1
    assert bounding_box(local) == (slice(5, 8), slice(30, 32))
    np.testing.assert_array_equal(drop_small_components(local, 6), local)
    assert drop_small_components(local, 7).sum() == 0


def test_a_misspelt_key_is_an_error_not_a_default(tmp_path):
    """`min_comp` for `min_component` used to leave the class at min_component 0, silently."""
    good = Rules(tuple(ClassRule(c, 0.5, 150, 600, 0.6) for c in (1, 2, 3, 4))).to_dict()
    path = tmp_path / "thresholds.json"
    good["classes"][2]["min_comp"] = good["classes"][2].pop("min_component")
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError, match=r"thresholds\.json: .*class 3: unknown key\(s\) \['min_comp'\]"):
        Rules.load(path)
    path.write_text(json.dumps({**Rules().to_dict(), "one_class_per_pixle": True}))
    with pytest.raises(ValueError, match=r"rules: unknown key\(s\) \['one_class_per_pixle'\]"):
        Rules.load(path)


def test_an_older_thresholds_file_keeps_its_meaning(tmp_path):
    """A thresholds.json written before `seg_gate` existed: its `gate` still reads the classifier's
    probability when there is one, else the max pixel probability; no second gate."""
    old = {"classes": [{"class_id": k, "pixel_threshold": 0.5, "min_component": 0, "min_area": 0, "gate": 0.7}
                       for k in range(1, 5)], "one_class_per_pixel": False}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(old))
    rules = Rules.load(tmp_path / "t.json")
    assert [r.seg_gate for r in rules.classes] == [0.0] * 4
    probs = probs_with((0, slice(0, 4), slice(0, 4), 0.65), (1, slice(0, 4), slice(0, 4), 0.8))
    assert [int(m.sum()) for m in apply(probs, rules)] == [0, 16, 0, 0]  # max pixel 0.65 < 0.7 <= 0.8
    cls = np.array([0.9, 0.1, 0.0, 0.0], np.float32)
    assert [int(m.sum()) for m in apply(probs, rules, cls)] == [16, 0, 0, 0]  # the classifier's call


def test_both_gates_must_clear():
    rules = Rules(tuple(ClassRule(k, 0.5, gate=0.5, seg_gate=0.7) for k in range(1, 5)))
    probs = probs_with((0, slice(0, 4), slice(0, 4), 0.65), (1, slice(0, 4), slice(0, 4), 0.8))
    cls = np.array([0.9, 0.9, 0.9, 0.9], np.float32)
    assert [int(m.sum()) for m in apply(probs, rules, cls)] == [0, 16, 0, 0]  # seg 0.65 < 0.7
    cls[1] = 0.4
    assert [int(m.sum()) for m in apply(probs, rules, cls)] == [0, 0, 0, 0]  # classifier 0.4 < 0.5
    with pytest.raises(ValueError, match="seg_gate 1.5 not in"):
        ClassRule(1, seg_gate=1.5)
