"""steel_seg.workflow.pseudo: the selection rules on hand-made scores, the outputs read back by `labels`."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_models import TINY_UNET

from steel_seg.cli import main as cli_main
from steel_seg.competition import IMAGE_SHAPE, SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_CSV, TRAIN_IMAGES, Layout
from steel_seg.engine.runner import PredictSettings
from steel_seg.formats import metric, rle
from steel_seg.formats.labels import Labels, read_label_file
from steel_seg.formats.oof import dequantise, quantise
from steel_seg.models import factory
from steel_seg.models.manifest import copy_model_dir, write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules
from steel_seg.synthetic.dataset import write_dataset
from steel_seg.train.config import TrainConfig
from steel_seg.train.loop import train
from steel_seg.workflow import pseudo
from steel_seg.workflow.pseudo import (
    CLEAN,
    CLEARED,
    CONTRADICTED,
    DEFECT,
    LOW_CONFIDENCE,
    UNCERTAIN,
    UNREADABLE,
    Confidence,
    Summary,
    check_readable,
    class_verdict,
    decide,
    image_verdicts,
    is_selected,
    mask_confidence,
    write_outputs,
)

LIMITS = Confidence(positive=0.8, negative=0.2, min_pixel_confidence=0.7)


@pytest.mark.parametrize(
    ("gate", "area", "confidence", "verdict"),
    [
        (0.05, 0, math.nan, CLEAN),
        (0.2, 0, math.nan, CLEAN),  # the negative limit itself is sure
        (0.1, 30, 0.6, CONTRADICTED),  # a mask under a negative gate: the rules and the gate disagree
        (0.2000001, 0, math.nan, UNCERTAIN),
        (0.5, 400, 0.9, UNCERTAIN),
        (0.7999, 400, 0.95, UNCERTAIN),
        (0.8, 400, 0.7, DEFECT),  # both limits themselves are sure
        (0.99, 400, 0.95, DEFECT),
        (0.95, 0, math.nan, CLEARED),  # a positive gate, but the rules left no mask
        (0.95, 400, 0.6999, LOW_CONFIDENCE),
    ],
)
def test_class_verdict_every_branch(gate, area, confidence, verdict):
    assert class_verdict(gate, area, confidence, LIMITS) == verdict


def test_limits_compare_in_float32_like_the_gates():
    """A float32 gate score of 0.2 is 0.2000000029802...: still the negative limit 0.2."""
    assert class_verdict(np.float32(0.2), 0, math.nan, LIMITS) == CLEAN
    assert class_verdict(np.float32(0.8), 5, np.float32(0.7), LIMITS) == DEFECT


def test_an_image_is_selected_only_when_every_class_is_sure():
    gates = np.array([0.9, 0.1, 0.05, 0.0], np.float32)
    areas = np.array([500, 0, 0, 0])
    confidences = np.array([0.9, np.nan, np.nan, np.nan], np.float32)
    verdicts = image_verdicts(gates, areas, confidences, LIMITS)
    assert verdicts == (DEFECT, CLEAN, CLEAN, CLEAN) and is_selected(verdicts)
    gates[2] = 0.5
    verdicts = image_verdicts(gates, areas, confidences, LIMITS)
    assert verdicts == (DEFECT, CLEAN, UNCERTAIN, CLEAN) and not is_selected(verdicts)
    assert is_selected((CLEAN,) * 4)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"negative": 0.5, "positive": 0.5}, "negative < positive"), ({"min_pixel_confidence": 1.5}, "not in")],
)
def test_confidence_limits_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        Confidence(**kw)


def test_mask_confidence_is_the_mean_probability_over_the_mask():
    probs = np.zeros((4, 4, 6), np.float32)
    masks = np.zeros((4, 4, 6), np.uint8)
    probs[0, :2, :2] = [[0.6, 0.8], [1.0, 0.6]]
    masks[0, :2, :2] = 1
    probs[1] = 0.9  # high probabilities outside any mask do not count
    masks[2, 3, 5] = 1
    probs[2, 3, 5] = 0.55
    confidence = mask_confidence(probs, masks)
    np.testing.assert_allclose(confidence[[0, 2]], [0.75, 0.55], rtol=1e-6)
    assert np.isnan(confidence[1]) and np.isnan(confidence[3]) and confidence.dtype == np.float32


def blob_probs(value: float = 0.95, background: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Full-size `(4, H, W)` probabilities: a 20x40 blob of `value` in class 1, `background` elsewhere."""
    probs = np.full((4, *IMAGE_SHAPE), background, np.float32)
    blob = np.zeros(IMAGE_SHAPE, np.uint8)
    blob[100:120, 700:740] = 1
    probs[0][blob == 1] = value
    return probs, blob


def test_decide_labels_a_sure_image_with_the_kernels_mask():
    probs, blob = blob_probs()
    decision = decide("a.jpg", probs, None, Rules(), LIMITS)  # gate = max pixel probability
    assert decision.verdicts == (DEFECT, CLEAN, CLEAN, CLEAN) and decision.selected
    assert decision.rles == (rle.encode(blob), "", "", "") and decision.reason() == ""
    # gates read at the OOF resolution, as the kernel reads them: the nearest 1/255
    np.testing.assert_allclose(decision.gates, dequantise(quantise(np.array([0.95, 0.02, 0.02, 0.02]))))
    assert decision.areas.tolist() == [800, 0, 0, 0]


def test_decide_uses_image_level_scores_and_the_rules():
    probs, _ = blob_probs()
    cls = np.array([0.9, 0.5, 0.1, 0.0], np.float32)
    decision = decide("a.jpg", probs, cls, Rules(), LIMITS)
    assert decision.verdicts == (DEFECT, UNCERTAIN, CLEAN, CLEAN) and not decision.selected
    assert decision.rles is None and decision.reason() == "class 2: uncertain gate"
    big_area = Rules(tuple(ClassRule(c, min_area=1000) for c in range(1, 5)))
    cleared = decide("a.jpg", probs, None, big_area, LIMITS)
    assert cleared.verdicts[0] == CLEARED and cleared.areas[0] == 0
    faint, _ = blob_probs(value=0.65)
    thin = decide("a.jpg", faint, None, Rules(), Confidence(0.6, 0.1, 0.7))
    assert thin.verdicts[0] == LOW_CONFIDENCE and thin.reason() == "class 1: low pixel confidence"


def test_a_selected_image_that_does_not_read_at_full_size_is_left_out(tmp_path):
    decision = decide("a.jpg", blob_probs()[0], None, Rules(), LIMITS)
    good, small, broken = tmp_path / "good.jpg", tmp_path / "small.jpg", tmp_path / "broken.jpg"
    cv2.imwrite(str(good), np.full(IMAGE_SHAPE, 90, np.uint8))
    cv2.imwrite(str(small), np.full((128, 800), 90, np.uint8))
    broken.write_bytes(b"not a jpeg")
    assert check_readable(decision, good) is decision
    for path, problem in ((small, "size 800x128"), (broken, "not a decodable image")):
        left_out = check_readable(decision, path)
        assert not left_out.selected and left_out.reasons() == [UNREADABLE]
        assert left_out.reason().startswith(f"{UNREADABLE}: {problem}")


def decisions() -> list[pseudo.Decision]:
    """Three images: a selected defect, a selected clean one, one left out (classes 2 and 3 unsure)."""
    probs, _ = blob_probs()
    clean = np.full((4, *IMAGE_SHAPE), 0.01, np.float32)
    unsure = clean.copy()
    unsure[1, 10:20, 10:20] = 0.5  # class 2: a gate in between
    unsure[2, 50:60, 50:60], unsure[2, 55, 55] = 0.55, 0.97  # class 3: a sure gate over a faint mask
    return [
        decide("b.jpg", probs, None, Rules(), LIMITS),
        decide("a.jpg", clean, None, Rules(), LIMITS),
        decide("c.jpg", unsure, None, Rules(), LIMITS),
    ]


def test_outputs_read_back_through_labels(tmp_path):
    found = decisions()
    summary = Summary.of(found, LIMITS, {"weights_dir": "w", "images_dir": "i", "out_dir": str(tmp_path)})
    write_outputs(tmp_path, found, summary)
    train = read_label_file(tmp_path / "train.csv")
    assert train.layout is Layout.ORIGINAL and train.image_ids == ["b.jpg", "a.jpg"]
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0] == Layout.ORIGINAL.header and len(lines) == 1 + 2 * 4  # 4 explicit rows an image
    labels = Labels.from_csv(tmp_path / "train.csv")
    np.testing.assert_array_equal(labels.masks("b.jpg")[0], blob_probs()[1])
    assert not labels.masks("a.jpg").any()
    table = pd.read_csv(tmp_path / "selection.csv", keep_default_na=False)
    assert table["ImageId"].tolist() == ["b.jpg", "a.jpg", "c.jpg"] and table["selected"].tolist() == [
        1,
        1,
        0,
    ]
    assert table.loc[2, "reason"] == "class 2: uncertain gate; class 3: low pixel confidence"
    assert table.loc[0, "gate_1"] == pytest.approx(242 / 255) and table.loc[0, "area_1"] == 800  # 0.95
    assert table.loc[1, "confidence_1"] == ""  # no mask, no confidence
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["images"] == 3 and written["selected"] == 2
    assert written["per_class"]["1"] == {DEFECT: 1, CLEAN: 1} and written["per_class"]["3"] == {
        DEFECT: 0,
        CLEAN: 2,
    }
    assert written["left_out"] == {LOW_CONFIDENCE: 1, UNCERTAIN: 1} and written["limits"]["negative"] == 0.2
    assert "3 images: 2 selected" in summary.text() and "data.extra_sources" in summary.text()


def earlier_round(out):
    """The three files of a finished pseudo-label round."""
    out.mkdir(parents=True)
    for name in (TRAIN_CSV, "selection.csv", "summary.json"):
        (out / name).write_text(f"earlier {name}\n")
    return out


def test_an_earlier_rounds_outputs_are_kept_unless_overwrite_and_until_the_new_is_whole(tmp_path):
    images, out = tmp_path / "images", earlier_round(tmp_path / "out")
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros(IMAGE_SHAPE, np.uint8))
    Rules().save(tmp_path / "thresholds.json")
    with pytest.raises(ValueError, match=r"out: already holds a pseudo-label round; pass --overwrite"):
        pseudo.run(tmp_path, images, out)
    with pytest.raises(ValueError, match=r"manifest\.json"):  # a start-up check fails after --overwrite
        pseudo.run(tmp_path, images, out, overwrite=True)
    assert (out / TRAIN_CSV).read_text() == f"earlier {TRAIN_CSV}\n" and len(list(out.iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out", "thresholds.json"]  # no .partial


def test_overwrite_never_replaces_an_input_or_a_folder_that_is_no_round(tmp_path, capsys):
    """`--images imgs --out imgs`, `--out` above the data and the weights, a round holding a user's notes:
    refused even with --overwrite, before any model is loaded, and nothing is touched."""
    data, weights = tmp_path / "data", tmp_path / "weights"
    (data / "test_images").mkdir(parents=True)
    cv2.imwrite(str(data / "test_images" / "a.jpg"), np.zeros(IMAGE_SHAPE, np.uint8))
    weights.mkdir()
    (weights / "thresholds.json").write_text("tuned")
    (earlier_round(tmp_path / "round") / "notes.txt").write_text("mine")
    before = sorted(p for p in tmp_path.rglob("*"))
    args = ["pseudo", "--weights-dir", str(weights), "--images", str(data / "test_images"), "--overwrite",
            "--device", "cpu", "--out"]  # fmt: skip
    refusals = [(data / "test_images", "is the images folder"), (tmp_path, "holds the images folder"),
                (weights, "is the weights dir"), (tmp_path / "round", "round's (notes.txt)")]  # fmt: skip
    for out, says in refusals:
        assert cli_main([*args, str(out)]) == 2
        assert says in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_negative_limit_is_refused(tmp_path):
    with pytest.raises(SystemExit) as caught:
        cli_main(["pseudo", "--weights-dir", str(tmp_path), "--images", str(tmp_path), "--out",
                  str(tmp_path / "out"), "--limit", "-1"])  # fmt: skip
    assert caught.value.code == 2


def test_a_round_that_selected_nothing_offers_nothing_to_train_on():
    unsure = decide("c.jpg", np.full((4, 8, 8), 0.5, np.float32), None, Rules(), LIMITS)
    summary = Summary.of([unsure], LIMITS, {"weights_dir": "w", "images_dir": "i", "out_dir": "o"})
    assert "1 images: 0 selected" in summary.text() and "nothing to train on" in summary.text()
    assert "extra_sources:" not in summary.text().replace("to data.extra_sources", "")


def test_the_printed_extra_source_reads_back_with_any_path():
    paths = {"weights_dir": "w", "images_dir": "/data/test images, round 1", "out_dir": "/p: q/[r]"}
    summary = Summary.of(decisions(), LIMITS, paths)
    [line] = [x for x in summary.text().splitlines() if "train on them" in x]
    entry = yaml.safe_load(line.partition("data.extra_sources: ")[2])
    assert entry == [
        {"train_csv": "/p: q/[r]/train.csv", "images_dir": "/data/test images, round 1", "weight": 1.0}
    ]


def test_a_full_disk_names_the_file_and_leaves_the_earlier_round(tmp_path, small_disk):
    weights, images = tmp_path / "weights", tmp_path / "images"
    factory.save(factory.build_model(TINY_UNET), TINY_UNET, weights / "a")
    write_manifest(weights, ["a"], tta=("none",))
    Rules().save(weights / "thresholds.json")
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros(IMAGE_SHAPE, np.uint8))
    disk = small_disk(256 << 10)
    out = earlier_round(disk / "round")
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 2048))
    with pytest.raises(OSError, match=rf"no space left on device writing {disk}/\.round\.partial/\S+ \("):
        pseudo.run(weights, images, out, settings=PredictSettings(device="cpu", workers=0, progress=False),
                   overwrite=True)  # fmt: skip
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "round"] and len(list(out.iterdir())) == 3


def test_bad_inputs_are_named_before_any_prediction(tmp_path):
    with pytest.raises(ValueError, match="not a folder of"):
        pseudo.run(tmp_path, tmp_path / "absent", tmp_path / "out")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros(IMAGE_SHAPE, np.uint8))
    with pytest.raises(ValueError, match=r"thresholds\.json"):
        pseudo.run(tmp_path, images, tmp_path / "out")
    Rules().save(tmp_path / "thresholds.json")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        pseudo.run(tmp_path, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- end to end: a model trained on a synthetic set, the CLI, training on the selection -------------------
TRAIN_CONFIG = {
    "data": {"folds": "random 20", "crop": [256, 256], "defect_crop_p": 0.5, "batch_size": 8,
             "val_batch_size": 4, "workers": 0, "batches_per_epoch": 19,
             "augment": {"hflip": 0.5, "vflip": 0.5}},
    "model": {"arch": "FPN", "encoder": "tu-mobilenetv3_small_050", "in_channels": 1,
              "decoder_channels": [32, 32], "mean": 0.39, "std": 0.1, "seg_prior": 0.01},
    "optim": {"lr": 0.005},
    "schedule": {"epochs": 6, "warmup_steps": 3},
    "loss": {"bce_weight": 0.75, "dice_weight": 0.25},
    "train": {"seed": 0, "device": "cpu", "progress": False},
}  # fmt: skip
SURE = ["--positive", "0.9", "--negative", "0.45", "--min-pixel-confidence", "0.8"]  # for a 114-step model


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread) -> dict:
    """A synthetic set (160 train, 16 test images with truth), a small FPN trained on it for 114 steps (it
    learns the commonest class, and is far from sure of every image), its weights dir at the default rules."""
    root = tmp_path_factory.mktemp("pseudo")
    data = root / "data"
    write_dataset(data, 160, 16, "original", seed=5, progress=False)
    config = {**TRAIN_CONFIG, "data": {**TRAIN_CONFIG["data"], "train_csv": str(data / TRAIN_CSV),
                                       "images_dir": str(data / TRAIN_IMAGES)}}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run = train(TrainConfig.from_dict(config), root / "runs" / "a")
    weights = root / "weights"
    copy_model_dir(run.run_dir / "best", weights, "a")
    write_manifest(weights, ["a"], tta=("none", "h"))
    Rules().save(weights / "thresholds.json")
    return {"root": root, "data": data, "weights": weights, "config": root / "config.yaml"}


@pytest.mark.slow
def test_the_selection_agrees_with_the_truth_better_than_the_kernel_on_all_images(trained, capsys):
    """Its labels are the kernel's own predictions (`steel-seg predict`) of the images it selects."""
    data, weights, out = trained["data"], trained["weights"], trained["root"] / "pseudo"
    engine = ["--device", "cpu", "--workers", "0", "--no-progress"]
    args = ["pseudo", "--weights-dir", str(weights), "--images", str(data / TEST_IMAGES), "--out", str(out)]
    assert cli_main([*args, *SURE, *engine]) == 0
    assert "selected -> " in capsys.readouterr().out
    kernel = trained["root"] / "submission.csv"
    predict = ["predict", "--weights-dir", str(weights), "--images", str(data / TEST_IMAGES),
               "--sample", str(data / SAMPLE_SUBMISSION), "--out", str(kernel)]  # fmt: skip
    assert cli_main([*predict, *engine]) == 0
    truth = Labels.from_csv(data / "test_truth.csv", data / TEST_IMAGES)
    chosen, predicted = read_label_file(out / TRAIN_CSV), read_label_file(kernel)
    assert 0 < len(chosen.image_ids) < len(truth.image_ids)
    on_chosen = predicted.table[predicted.table["ImageId"].isin(chosen.image_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(chosen.table, on_chosen)  # the kernel's own labels: one inference path
    selected = metric.score(truth.table, chosen.table, chosen.image_ids).mean_dice
    everywhere = metric.score(truth.table, predicted.table, truth.image_ids).mean_dice
    assert selected > everywhere, (selected, everywhere)
    table = pd.read_csv(out / "selection.csv", keep_default_na=False)
    assert sorted(table["ImageId"]) == truth.image_ids and table["selected"].sum() == len(chosen.image_ids)
    assert (table["reason"] == "").tolist() == table["selected"].astype(bool).tolist()
    assert cli_main([*args, *engine]) == 2  # the earlier run's outputs are kept
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_pseudo_then_train_with_the_selection_as_an_extra_source(trained, capsys):
    """The workflow from the command line: `steel-seg pseudo` -> train.csv -> `steel-seg train`."""
    data, out = trained["data"], trained["root"] / "round"
    engine = ["--device", "cpu", "--workers", "0", "--no-progress"]
    assert cli_main(["pseudo", "--weights-dir", str(trained["weights"]), "--images", str(data / TEST_IMAGES),
                     "--out", str(out), *SURE, *engine]) == 0  # fmt: skip
    n_selected = json.loads((out / "summary.json").read_text())["selected"]
    source = [{"train_csv": str(out / TRAIN_CSV), "images_dir": str(data / TEST_IMAGES), "weight": 2.0}]
    sets = ["--set", f"data.extra_sources={json.dumps(source)}", "--set", "schedule.epochs=1",
            "--set", "data.batches_per_epoch=2"]  # fmt: skip
    run = trained["root"] / "runs" / "b"
    assert cli_main(["train", "--config", str(trained["config"]), "--out", str(run), *sets]) == 0
    primary, extra = json.loads((run / "run.json").read_text())["sources"]
    assert primary["val_images"] == 8 and primary["train_images"] == 152
    assert extra["train_images"] == n_selected > 0 and extra["weight"] == 2.0 and extra["val_images"] == 0
    assert extra["train_csv"] == str((out / TRAIN_CSV).resolve())
