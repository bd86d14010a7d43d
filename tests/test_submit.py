"""Load -> predict -> validate (the kernel's and `steel-seg predict`'s one path) on synthetic data: images
OpenCV chokes on, and an earlier submission that must survive until the new one is whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from damage import oversized_jpeg
from tiny_models import TINY_UNET as TINY

from steel_seg import kernel
from steel_seg.cli import main as cli_main
from steel_seg.formats import submission
from steel_seg.models import factory
from steel_seg.models.manifest import write_manifest
from steel_seg.postprocess.rules import ClassRule, Rules

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny random smp Unet as an uploadable weights dir, with rules that keep what it predicts."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY), TINY, root / "tiny")
    write_manifest(root, ["tiny"], tta=("none",))
    Rules(tuple(ClassRule(c, 0.5) for c in range(1, 5))).save(root / "thresholds.json")
    return root


def predict(weights: Path, data: Path, out: Path) -> int:
    return cli_main(["predict", "--weights-dir", str(weights), "--images", str(data / "test_images"),
                     "--sample", str(data / "sample_submission.csv"), "--out", str(out), "--device", "cpu",
                     "--batch-size", "2", "--workers", "1", "--no-progress"])  # fmt: skip


def rows(path: Path) -> dict[str, list[str]]:
    return {
        line.split(",")[0] + line.split(",")[-1]: line.split(",") for line in path.read_text().splitlines()
    }


def test_an_image_opencv_refuses_is_predicted_empty_and_the_others_as_before(
    weights, synthetic_set, tmp_path, caplog
):
    """A JPEG whose header claims 65000 x 65000 pixels makes OpenCV raise its own cv2.error."""
    assert predict(weights, synthetic_set.out_dir, tmp_path / "clean.csv") == 0
    data = tmp_path / "data"
    shutil.copytree(synthetic_set.out_dir, data)
    ids = submission.read_sample(data / "sample_submission.csv").image_ids
    victim = data / "test_images" / ids[1]
    oversized_jpeg(victim, data / "test_images" / ids[0])
    assert predict(weights, data, tmp_path / "out.csv") == 0
    assert f"{victim}: OpenCV cannot decode it" in caplog.text and "(predicted empty)" in caplog.text
    clean, out = rows(tmp_path / "clean.csv"), rows(tmp_path / "out.csv")
    assert submission.validate(tmp_path / "out.csv", data / "sample_submission.csv") == []
    assert {k: v for k, v in out.items() if ids[1] not in k} == {
        k: v for k, v in clean.items() if ids[1] not in k
    }
    assert [v[1:] for k, v in out.items() if ids[1] in k] == [["1 409600", "0"]]  # sample-like: no defect


def test_an_earlier_submission_stays_until_the_new_one_is_whole(
    weights, synthetic_set, tmp_path, monkeypatch
):
    """The kernel used to delete --out at start: a run killed on Kaggle then left no submission at all."""
    out = tmp_path / "submission.csv"
    out.write_text("an earlier, complete submission\n")
    seen = []
    write = submission.SubmissionWriter.write

    def watching_write(self, image_id, rles):
        seen.append(out.read_text())
        return write(self, image_id, rles)

    monkeypatch.setattr(submission.SubmissionWriter, "write", watching_write)
    manifest = json.loads((weights / "manifest.json").read_text())
    rules = json.loads((weights / "thresholds.json").read_text())
    args = ["--data-dir", str(synthetic_set.out_dir), "--weights-dir", str(weights), "--out", str(out),
            "--device", "cpu", "--workers", "0", "--no-progress", "--strict"]  # fmt: skip
    assert kernel.main(args, manifest, rules) == kernel.OK
    assert seen and set(seen) == {"an earlier, complete submission\n"}
    assert submission.validate(out, synthetic_set.out_dir / "sample_submission.csv") == []
