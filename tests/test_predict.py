"""The inference engine on real (tiny, random-weight) smp models, synthetic JPEGs and Kaggle-style samples."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_models import forward_probs
from torch import nn

from steel_seg.cli import main as cli_main
from steel_seg.competition import SAMPLE_LAYOUTS, Layout
from steel_seg.engine.ensemble import Ensemble, Member, flip
from steel_seg.engine.predict import iter_probs, predict_submission
from steel_seg.engine.runner import IN_FLIGHT, PredictSettings
from steel_seg.formats import rle, submission
from steel_seg.formats.images import read_grey
from steel_seg.models import factory
from steel_seg.models.factory import to_tensor
from steel_seg.models.manifest import Manifest, ManifestError, write_manifest
from steel_seg.postprocess.on_device import threshold_on_device
from steel_seg.postprocess.rules import ClassRule, Rules, apply, gate_scores, threshold
from steel_seg.progress import Progress

ENCODER = "tu-mobilenetv3_small_050"
SEG = factory.ModelSpec(
    arch="Unet", encoder=ENCODER, in_channels=1, encoder_depth=3, decoder_channels=(8, 8, 8)
)
SEG_AUX = factory.ModelSpec(
    arch="Unet",
    encoder=ENCODER,
    in_channels=1,
    encoder_depth=3,
    decoder_channels=(8, 8, 8),
    aux_head=True,
    mean=0.4,
    std=0.2,
)
CLS = factory.ModelSpec(arch="Classifier", encoder=ENCODER, in_channels=3, encoder_depth=3)
FAST = {"workers": 0, "progress": False, "batch_size": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _member(name: str, spec: factory.ModelSpec, seed: int, **kw) -> Member:
    torch.manual_seed(seed)
    return Member(
        name, "cls" if spec.arch == "Classifier" else "seg", factory.build_model(spec).eval(), spec, **kw
    )


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Two real segmenters (one with an aux head) saved with `factory.save`, a manifest and thresholds."""
    root = tmp_path_factory.mktemp("weights")
    for name, spec, seed in (("aux", SEG_AUX, 0), ("plain", SEG, 1)):
        torch.manual_seed(seed)
        factory.save(factory.build_model(spec), spec, root / name)
    write_manifest(root, ["aux", "plain"], tta=("none",))
    Rules().save(root / "thresholds.json")
    return root


def _sample_csv(path: Path, image_ids: list[str], layout: Layout) -> Path:
    if layout is Layout.ORIGINAL:
        rows = [f"{i}_{c},1 1\n" for i in image_ids for c in range(1, 5)]
    else:
        rows = [f"{i},1 409600,0\n" for i in image_ids]
    path.write_text(layout.header + "\n" + "".join(rows))
    return path


def _rows(csv: Path) -> dict[str, list[str]]:
    """ImageId -> 4 RLE strings (class 1..4) of a submission in either layout."""
    table = submission.read_predictions(csv)
    out: dict[str, list[str]] = {}
    for image_id, class_id, encoded in table[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False):
        out.setdefault(image_id, ["", "", "", ""])[int(class_id) - 1] = encoded
    return out


# --- TTA and ensemble maths -------------------------------------------------------------------------------


def test_tta_views_are_unflipped_exactly():
    member = _member("m", SEG, 0, views=("none", "h", "v", "hv"))
    ensemble = Ensemble([member])
    grey = torch.randint(0, 256, (2, 64, 320), dtype=torch.uint8)
    with torch.inference_mode():
        out = ensemble.forward(grey, ensemble.plan())
        seg, cls = out.seg, out.cls
        x = to_tensor(grey, SEG)
        per_view = {v: flip(forward_probs(member.model, SEG, flip(x, v))[0], v) for v in member.views}
    assert cls is None
    torch.testing.assert_close(seg, sum(per_view.values()) / 4, atol=1e-6, rtol=1e-5)
    # The model is not flip-invariant, so a view left flipped (or un-flipped twice) would show.
    assert (per_view["h"] - per_view["none"]).abs().max() > 1e-3
    assert (flip(per_view["h"], "h") - per_view["none"]).abs().max() > 1e-3


def test_ensemble_weighted_average_and_gate_sources():
    aux, plain = _member("aux", SEG_AUX, 0, weight=1.0), _member("plain", SEG, 1, weight=3.0)
    clf = _member("clf", CLS, 2, weight=2.0)
    grey = torch.randint(0, 256, (2, 64, 320), dtype=torch.uint8)
    with torch.inference_mode():
        seg_a, cls_a = forward_probs(aux.model, SEG_AUX, to_tensor(grey, SEG_AUX))
        seg_p, _ = forward_probs(plain.model, SEG, to_tensor(grey, SEG))
        _, cls_c = forward_probs(clf.model, CLS, to_tensor(grey, CLS))
        out = Ensemble([aux, plain]).forward(grey, {"aux": ("none",), "plain": ("none",)})
        seg, cls = out.seg, out.cls
        torch.testing.assert_close(seg, (seg_a + 3 * seg_p) / 4)
        torch.testing.assert_close(cls, cls_a)  # the aux head gates when there is no classifier
        three = Ensemble([aux, plain, clf])
        out3 = three.forward(grey, three.plan())
        seg3, cls3 = out3.seg, out3.cls
        torch.testing.assert_close(seg3, seg)  # a classifier adds no pixels
        torch.testing.assert_close(cls3, cls_c)  # a classifier beats the aux head
        assert Ensemble([plain]).forward(grey, {"plain": ("none",)}).cls is None


def test_ensemble_rejects_a_role_that_does_not_fit_the_spec():
    with pytest.raises(ValueError, match="role 'cls' does not fit"):
        Ensemble([_member("p", SEG, 0), Member("x", "cls", nn.Identity(), SEG)])
    with pytest.raises(ValueError, match="at least one segmenter"):
        Ensemble([_member("clf", CLS, 0)])


@pytest.mark.parametrize("one_class", [False, True])
def test_device_threshold_matches_postprocess(one_class):
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 40, 60), dtype=np.float32)
    probs[:, 1, :5] = probs[:, 2, :5]  # ties go to the first class in both
    rules = Rules(
        tuple(ClassRule(k + 1, pixel_threshold=t) for k, t in enumerate((0.3, 0.5, 0.5, 0.9))),
        one_class_per_pixel=one_class,
    )
    cls = rng.random((3, 4), dtype=np.float32)
    masks, gates = threshold_on_device(torch.from_numpy(probs), None, rules)
    np.testing.assert_array_equal(masks.numpy(), threshold(probs, rules))
    np.testing.assert_array_equal(gates.numpy(), gate_scores(probs))
    _, gates = threshold_on_device(torch.from_numpy(probs), torch.from_numpy(cls), rules)
    np.testing.assert_array_equal(gates.numpy(), gate_scores(probs, cls))
    np.testing.assert_array_equal(gates.numpy()[:, 0], cls)  # the image-level gate reads the classifier


# --- loading: fail fast with the file named ---------------------------------------------------------------


def test_load_builds_the_manifest_ensemble(weights_dir):
    manifest = Manifest.load(weights_dir / "manifest.json")
    ensemble = Ensemble.load(weights_dir, manifest)
    assert list(ensemble.members) == ["aux", "plain"]
    assert ensemble.members["aux"].spec == SEG_AUX
    assert (ensemble.drop_order, ensemble.budget_s) == (manifest.drop_order, manifest.budget_s)


def test_load_checks_every_sha256_before_building_any_model(weights_dir, tmp_path):
    broken = tmp_path / "w"
    shutil.copytree(weights_dir, broken)
    (broken / "aux" / "spec.json").write_text("{broken")  # would fail if "aux" were loaded first
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["models"][1]["sha256"] = "0" * 64
    with pytest.raises(ManifestError, match=r"plain/model.safetensors: sha256 [0-9a-f]{64} does not match"):
        Ensemble.load(broken, Manifest.from_dict(manifest))


def test_load_rejects_a_spec_that_does_not_fit_the_weights(weights_dir, tmp_path):
    broken = tmp_path / "w"
    shutil.copytree(weights_dir, broken)
    spec = json.loads((broken / "plain" / "spec.json").read_text())
    spec["decoder_channels"] = [16, 8, 8]
    (broken / "plain" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ManifestError, match=r"model 'plain': .*plain \(spec.json vs model.safetensors\)"):
        Ensemble.load(broken, Manifest.load(broken / "manifest.json"))


def test_load_rejects_missing_files_and_wrong_roles(weights_dir, tmp_path):
    broken = tmp_path / "w"
    shutil.copytree(weights_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["models"][0]["role"] = "cls"
    with pytest.raises(
        ManifestError, match=r"aux/spec.json: arch Unet does not fit the manifest's role 'cls'"
    ):
        Ensemble.load(broken, Manifest.from_dict(manifest))
    (broken / "plain" / "model.safetensors").unlink()
    with pytest.raises(ManifestError, match=r"plain/model.safetensors: missing"):
        Ensemble.load(broken, Manifest.load(broken / "manifest.json"))


# --- end to end on JPEGs ----------------------------------------------------------------------------------


@pytest.fixture
def messy_images(synthetic_set, tmp_path) -> tuple[Path, list[str]]:
    """2 good JPEGs plus a corrupt, a truncated, a missing, a 1-channel and a wrongly sized one."""
    real = sorted((synthetic_set.out_dir / "test_images").glob("*.jpg"))
    images = tmp_path / "images"
    images.mkdir()
    for path in real[:2]:
        shutil.copy(path, images / path.name)
    grey = read_grey(real[0])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    data = real[1].read_bytes()
    (images / "truncated.jpg").write_bytes(data[:-2000])
    cv2.imwrite(str(images / "grey1.jpg"), grey)
    cv2.imwrite(str(images / "grey3.jpg"), np.repeat(grey[:, :, None], 3, axis=2))
    cv2.imwrite(str(images / "small.jpg"), cv2.resize(grey, (800, 128)))
    ids = [
        real[0].name,
        "corrupt.jpg",
        "truncated.jpg",
        "missing.jpg",
        "grey1.jpg",
        "grey3.jpg",
        "small.jpg",
        real[1].name,
    ]
    return images, ids


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "workers"), [(Layout.FINAL, 0), (Layout.ORIGINAL, 2)])
def test_bad_images_are_logged_and_predicted_empty(
    weights_dir, messy_images, tmp_path, caplog, layout, workers
):
    images, ids = messy_images
    sample = _sample_csv(tmp_path / "sample.csv", ids, layout)
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=0.0) for k in range(4)))
    ensemble = Ensemble([_member("plain", SEG, 1)])
    out = tmp_path / "sub.csv"
    with caplog.at_level(logging.WARNING, logger="steel_seg.engine.predict"):
        summary = predict_submission(
            ensemble, rules, images, sample, out, PredictSettings(**{**FAST, "workers": workers})
        )
    assert submission.validate(out, sample) == []
    assert submission.detect_layout(out) is layout
    reasons = {b.image_id: (b.reason, b.action) for b in summary.bad}
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg", "missing.jpg", "small.jpg"}
    assert reasons["missing.jpg"] == ("file not found", "predicted empty")
    assert reasons["truncated.jpg"] == reasons["corrupt.jpg"] == ("not a decodable image", "predicted empty")
    assert reasons["small.jpg"] == ("size 800x128, resized to 1600x256", "predicted after resizing")
    for b in summary.bad:
        assert f"{images / b.image_id}: {b.reason}" in caplog.text
    rows = _rows(out)
    # Threshold 0 turns every pixel of a readable image on; a bad image stays empty.
    full = rle.encode(np.ones((256, 1600), np.uint8))
    for image_id in ids:
        bad = reasons.get(image_id, ("", ""))[1] == "predicted empty"
        assert rows.get(image_id, ["", "", "", ""]) == (["", "", "", ""] if bad else [full] * 4), image_id
    assert summary.images == len(ids)
    assert "bad image" in summary.text()


@pytest.mark.slow
def test_one_channel_jpeg_predicts_like_its_three_channel_twin(weights_dir, messy_images):
    images, _ = messy_images
    ensemble = Ensemble([_member("plain", SEG, 1)])
    (_, one, _), (_, three, _) = iter_probs(
        ensemble, [images / "grey1.jpg", images / "grey3.jpg"], PredictSettings(**FAST)
    )
    np.testing.assert_array_equal(one, three)
    assert one.std() > 0


@pytest.mark.slow
def _engine_threads() -> list[str]:
    """The engine's threads still alive: its decode feed and device workers."""
    return [t.name for t in threading.enumerate() if t.name == "decode" or t.name.startswith("replica-")]


def test_iter_probs_matches_predict_submission(synthetic_set, tmp_path):
    """One implementation: the probabilities of `iter_probs` post-processed on the CPU give the same rows."""
    ids = synthetic_set.test_ids[:3]
    images = synthetic_set.out_dir / "test_images"
    ensemble = Ensemble([_member("aux", SEG_AUX, 0, views=("none", "h"))])
    settings = PredictSettings(**FAST)
    probs = list(iter_probs(ensemble, [images / i for i in ids], settings))
    assert [p[0] for p in probs] == ids
    assert not _engine_threads()  # ended, not left to die with the interpreter (an abort, exit 134)
    assert all(
        p[1].shape == (4, 256, 1600) and p[1].dtype == np.float32 and p[2].shape == (4,) for p in probs
    )
    # Rules that make every step matter: thresholds inside the probability range, components, a gate.
    stack = np.stack([p[1] for p in probs])
    gates = np.stack([p[2] for p in probs])
    rules = Rules(
        tuple(
            ClassRule(
                k + 1,
                pixel_threshold=float(np.quantile(stack[:, k], 0.8)),
                min_component=30,
                min_area=100,
                gate=float(np.median(gates[:, k])),
            )
            for k in range(4)
        ),
        one_class_per_pixel=True,
    )
    expected = {i: rle.encode_many(apply(p, rules, c)) for i, p, c in probs}
    assert any(any(r) for r in expected.values()) and not all(all(r) for r in expected.values())
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.FINAL)
    predict_submission(ensemble, rules, images, sample, tmp_path / "sub.csv", settings)
    rows = _rows(tmp_path / "sub.csv")
    assert {i: rows.get(i, ["", "", "", ""]) for i in ids} == expected


# --- the time budget with a deliberately slow model -------------------------------------------------------


class SlowSegmenter(nn.Module):
    """A real module whose forward sleeps `seconds` per image-view: a model of known cost."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.head = nn.Conv2d(1, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds * x.shape[0])
        return self.head(x)


@pytest.mark.slow
def test_budget_drops_views_then_models_and_finishes_in_time(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "0.jpg"), np.full((256, 1600), 128, np.uint8))
    ids = [f"{i:03d}.jpg" for i in range(12)]
    for image_id in ids:
        shutil.copy(images / "0.jpg", images / image_id)
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.ORIGINAL)
    members = [
        Member("a", "seg", SlowSegmenter(0.02), SEG, views=("none", "h")),
        Member("b", "seg", SlowSegmenter(0.8), SEG, views=("none", "h")),
    ]
    # Sleeps alone: 1.64 s per image in full, 0.82 without h, 0.02 without b. The projection after 3 images
    # (~4.9 s spent) is ~20 s in full, ~12 s without h and ~5 s without b: 8.5 s sits between with margins
    # of several seconds, so a loaded machine cannot change the decisions.
    ensemble = Ensemble(members, drop_order=["tta:h", "model:b"], budget_s=8.5)
    with caplog.at_level(logging.WARNING, logger="steel_seg.engine.predict"):
        summary = predict_submission(
            ensemble,
            Rules(),
            images,
            sample,
            tmp_path / "sub.csv",
            PredictSettings(**{**FAST, "batch_size": 1}),
        )
    assert [(d.step, d.action, d.images_done) for d in summary.decisions] == [
        ("tta:h", "dropped", 3),
        ("model:b", "dropped", 3),
    ]
    assert all(d.projected_s > 8.5 for d in summary.decisions)
    assert summary.decisions[-1].projected_after_s <= 8.5
    assert summary.plan == {"a": ("none",)}
    assert summary.seconds <= 8.5
    assert summary.images == 12 and submission.validate(tmp_path / "sub.csv", sample) == []
    for decision in summary.decisions:
        assert decision.text() in caplog.text


def _flat_images(folder: Path, n: int) -> list[str]:
    """`n` identical mid-grey JPEGs in `folder`; returns their ImageIds."""
    folder.mkdir()
    cv2.imwrite(str(folder / "0.jpg"), np.full((256, 1600), 128, np.uint8))
    ids = [f"{i:03d}.jpg" for i in range(n)]
    for image_id in ids:
        shutil.copy(folder / "0.jpg", folder / image_id)
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(SAMPLE_LAYOUTS))
def test_the_deadline_stops_the_run_and_writes_the_rest_empty(tmp_path, caplog, layout):
    """A model that needs ~24 s for the set, a 3 s limit: the run ends near the limit with a valid file."""
    ids = _flat_images(tmp_path / "images", 40)
    sample = _sample_csv(tmp_path / "sample.csv", ids, layout)
    ensemble = Ensemble([Member("slow", "seg", SlowSegmenter(0.3), SEG)], budget_s=3.0)
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=0.0) for k in range(4)))
    out, start = tmp_path / "sub.csv", time.perf_counter()
    settings = PredictSettings(**{**FAST, "batch_size": 2}, budget_start=start)
    with caplog.at_level(logging.INFO, logger="steel_seg.engine.predict"):
        summary = predict_submission(ensemble, rules, tmp_path / "images", sample, out, settings)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0 + 2.5  # the last batch that fits ends before the limit
    assert submission.validate(out, sample) == [] and submission.detect_layout(out) is layout
    rows = _rows(out)
    full = rle.encode(np.ones((256, 1600), np.uint8))
    predicted = [i for i in ids if rows.get(i, ["", "", "", ""]) == [full] * 4]
    assert predicted == ids[: len(predicted)] and 0 < len(predicted) < len(ids)  # a prefix, in order
    assert summary.cut == len(ids) - len(predicted)
    assert f"DEADLINE: {summary.cut} of 40 images were not reached and are written empty" in caplog.text


@pytest.mark.slow
def test_the_deadline_does_not_wait_for_a_batch_that_overruns_it(tmp_path, caplog):
    """The first batch alone takes 8 s (nothing measured yet to refuse it): the run stops waiting at 2 s."""
    ids = _flat_images(tmp_path / "images", 4)
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.FINAL)
    ensemble = Ensemble([Member("stuck", "seg", SlowSegmenter(4.0), SEG)], budget_s=2.0)
    start = time.perf_counter()
    settings = PredictSettings(**{**FAST, "batch_size": 2}, budget_start=start)
    summary = predict_submission(ensemble, Rules(), tmp_path / "images", sample, tmp_path / "s.csv", settings)
    assert time.perf_counter() - start < 2.0 + 2.0
    assert summary.cut == 4 and submission.validate(tmp_path / "s.csv", sample) == []
    assert "a batch was still running" in caplog.text


def test_an_infinite_budget_never_cuts(tmp_path):
    ids = _flat_images(tmp_path / "images", 3)
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.FINAL)
    ensemble = Ensemble([Member("quick", "seg", SlowSegmenter(0.0), SEG)])
    settings = PredictSettings(**FAST, budget_s=math.inf)
    summary = predict_submission(ensemble, Rules(), tmp_path / "images", sample, tmp_path / "s.csv", settings)
    assert summary.cut == 0 and summary.images == 3


# --- several devices, NaN/inf outputs ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_devices_give_the_same_submission_and_probabilities(synthetic_set, tmp_path):
    """Two CPU "devices", batch k on worker k mod 2, gathered in order: the same bytes as one device."""
    ids = sorted(synthetic_set.train_ids)[:5]
    images = synthetic_set.out_dir / "train_images"
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.ORIGINAL)
    ensemble = Ensemble([_member("aux", SEG_AUX, 0, views=("none", "h")), _member("plain", SEG, 1)])
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=0.5) for k in range(4)))
    outputs = {}
    for device in ("cpu", "cpu,cpu"):
        settings = PredictSettings(**FAST, device=device)
        predict_submission(ensemble, rules, images, sample, tmp_path / f"{device}.csv", settings)
        outputs[device] = list(iter_probs(ensemble, [images / i for i in ids], settings))
    assert (tmp_path / "cpu.csv").read_bytes() == (tmp_path / "cpu,cpu.csv").read_bytes()
    assert any(any(r) for r in _rows(tmp_path / "cpu.csv").values())
    one, two = outputs["cpu"], outputs["cpu,cpu"]
    assert [i for i, _, _ in one] == [i for i, _, _ in two] == ids
    for (_, seg1, cls1), (_, seg2, cls2) in zip(one, two, strict=True):
        np.testing.assert_array_equal(seg1, seg2)
        np.testing.assert_array_equal(cls1, cls2)


class NaNSegmenter(nn.Module):
    """A real module whose logits are NaN from its `after`-th call on (an fp16 overflow, in effect)."""

    def __init__(self, after: int = 0):
        super().__init__()
        self.after, self.calls = after, 0
        self.head = nn.Conv2d(1, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.head(x)
        return out * math.nan if self.calls > self.after else out


@pytest.mark.slow
def test_a_model_with_nan_outputs_is_dropped_loudly(synthetic_set, tmp_path, caplog):
    ids = sorted(synthetic_set.train_ids)[:3]
    images = synthetic_set.out_dir / "train_images"
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.FINAL)
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=0.5) for k in range(4)))
    settings = PredictSettings(**{**FAST, "batch_size": 1})
    good = _member("plain", SEG, 1)
    predict_submission(Ensemble([good]), rules, images, sample, tmp_path / "good.csv", settings)
    nan = NaNSegmenter()
    with caplog.at_level(logging.ERROR, logger="steel_seg.engine.predict"):
        summary = predict_submission(
            Ensemble([good, Member("nan", "seg", nan, SEG)]),
            rules,
            images,
            sample,
            tmp_path / "both.csv",
            settings,
        )
    assert summary.nonfinite == ["nan"] and summary.plan == {"plain": ("none",)}
    assert "model 'nan' produced NaN/inf outputs" in caplog.text and "model nan: NaN/inf" in summary.text()
    # Dropped once its first batch is booked (a batch queued behind it already ran); each averaged the good
    # model alone.
    assert 1 <= nan.calls <= IN_FLIGHT
    assert (tmp_path / "both.csv").read_bytes() == (tmp_path / "good.csv").read_bytes()


@pytest.mark.slow
def test_when_the_last_segmenter_turns_nan_the_rest_is_empty_and_iter_probs_stops(
    synthetic_set, tmp_path, caplog
):
    ids = sorted(synthetic_set.train_ids)[:3]
    images = synthetic_set.out_dir / "train_images"
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.ORIGINAL)
    rules = Rules(tuple(ClassRule(k + 1, pixel_threshold=0.0) for k in range(4)))
    ensemble = Ensemble([Member("nan", "seg", NaNSegmenter(after=1), SEG)])
    settings = PredictSettings(**{**FAST, "batch_size": 1})
    summary = predict_submission(ensemble, rules, images, sample, tmp_path / "sub.csv", settings)
    assert summary.nonfinite == ["nan"] and "no segmenter left" in caplog.text
    assert submission.validate(tmp_path / "sub.csv", sample) == []
    rows = _rows(tmp_path / "sub.csv")
    assert all(rows[ids[0]]) and ids[1] not in rows and ids[2] not in rows  # first predicted, then empty
    probs = iter_probs(
        Ensemble([Member("nan", "seg", NaNSegmenter(after=1), SEG)]), [images / i for i in ids], settings
    )
    assert next(probs)[1].any()  # OOF and pseudo-labels would read zeros as sure "no defect": they stop
    with pytest.raises(ValueError, match=f"no segmenter left at image {ids[1]}: nan produced NaN/inf"):
        next(probs)


def test_progress_logs_every_tenth_off_a_terminal(caplog):
    with (
        caplog.at_level(logging.INFO, logger="steel_seg.progress"),
        Progress(100, "predict", stream=io.StringIO()) as p,
    ):
        for _ in range(50):
            p.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[0].startswith("predict: 10/100 images (10%)")
    assert lines[-1].startswith("predict: 100/100 images (100%)")


def test_progress_draws_a_bar_on_a_terminal(caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with (
        caplog.at_level(logging.INFO, logger="steel_seg.progress"),
        Progress(10, "predict", stream=stream) as p,
    ):
        p.update(10)
    assert "10/10" in stream.getvalue() and caplog.records == []


# --- the CLI ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_predict_writes_a_valid_submission(weights_dir, synthetic_set, tmp_path, capsys):
    ids = synthetic_set.test_ids[:3]
    sample = _sample_csv(tmp_path / "sample.csv", ids, Layout.ORIGINAL)
    out = tmp_path / "sub.csv"
    code = cli_main(
        [
            "predict",
            "--weights-dir",
            str(weights_dir),
            "--images",
            str(synthetic_set.out_dir / "test_images"),
            "--sample",
            str(sample),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--limit",
            "1",
        ]
    )
    assert code == 0
    assert submission.validate(out, sample) == []
    printed = capsys.readouterr().out
    assert "predicted 1 images" in printed and "aux: none, plain: none" in printed


def test_cli_predict_reports_a_bad_weights_dir(tmp_path, capsys):
    code = cli_main(
        [
            "predict",
            "--weights-dir",
            str(tmp_path),
            "--images",
            str(tmp_path),
            "--sample",
            str(tmp_path / "s.csv"),
            "--out",
            str(tmp_path / "o.csv"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert f"{tmp_path / 'manifest.json'}: manifest not found" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_cli_rejects_a_budget_that_is_not_a_positive_number(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--weights-dir", str(tmp_path), "--images", str(tmp_path),
                  "--sample", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o.csv"),
                  "--budget-s", value])  # fmt: skip
    assert exit_info.value.code == 2
    assert f"--budget-s: {value!r} is not a finite number of seconds > 0" in capsys.readouterr().err
