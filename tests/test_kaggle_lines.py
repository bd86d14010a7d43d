"""Every `kaggle ...` line the project documents or prints is accepted by the real Kaggle CLI's parser (the
`kaggle` package, a test dependency), with no network and no credentials (`tests/kaggle_cli.py`).

Two of the six documented lines used to fail before reaching Kaggle: `kaggle competitions submit` and
`kaggle datasets version` both require `-m/--message`."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch
from kaggle_cli import KaggleLineError, load, offline, parse
from tiny_models import TINY_UNET

from steel_seg import bundle
from steel_seg.engine import devices
from steel_seg.models import factory
from steel_seg.models.manifest import write_manifest
from steel_seg.postprocess.rules import Rules

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "kernel" / "bootstrap.py.tmpl"
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`(kaggle [^`]+)`")


@pytest.fixture
def cli(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path / "home")
    return load()


def make_weights(weights_dir: Path) -> Path:
    torch.manual_seed(0)
    factory.save(factory.build_model(TINY_UNET), TINY_UNET, weights_dir / "tiny")
    write_manifest(weights_dir, ["tiny"], tta=("none",))
    Rules().save(weights_dir / "thresholds.json")
    return weights_dir


def readme_lines() -> list[str]:
    """The `kaggle` commands of README.md: lines of its fenced blocks, and inline code spans."""
    text = (ROOT / "README.md").read_text()
    fenced = [line.strip() for block in FENCE.findall(text) for line in block.splitlines()]
    return [line for line in fenced if line.startswith("kaggle ")] + INLINE.findall(text)


def printed_lines(text: str) -> list[str]:
    """The `kaggle` commands in printed text: from `kaggle ` to the line's end or the closing backtick."""
    return [
        m.group(1).strip() for m in re.finditer(r"(kaggle (?:competitions|datasets|kernels) [^`\n]+)", text)
    ]


def test_the_harness_sees_what_the_cli_refuses(cli):
    """The line README and build_kernel.py printed before: refused for its missing message."""
    with pytest.raises(KaggleLineError, match=r"required: -m/--message"):
        parse(
            cli,
            "kaggle competitions submit -c severstal-steel-defect-detection -k u/k -f submission.csv -v 3",
        )
    with pytest.raises(KaggleLineError, match="unrecognized arguments: --gpu"):
        parse(cli, "kaggle kernels push -p kernel --gpu")
    args = parse(cli, "kaggle kernels push -p kernel --accelerator NvidiaTeslaT4")
    assert (args.folder, args.acc) == ("kernel", "NvidiaTeslaT4")


def test_every_kaggle_line_of_the_readme_parses(cli):
    lines = readme_lines()
    commands = {" ".join(line.split()[:3]) for line in lines}
    assert {"kaggle competitions submit", "kaggle datasets version", "kaggle datasets create"} <= commands
    assert {"kaggle kernels push", "kaggle competitions download"} <= commands and len(lines) >= 7
    for line in lines:
        parse(cli, line)


def test_every_kaggle_line_build_kernel_prints_parses(cli, tmp_path, monkeypatch, capsys):
    """build_kernel.py as a user runs it (relative paths, from the folder that holds them)."""
    monkeypatch.chdir(tmp_path)
    make_weights(tmp_path / "my weights")  # a space: the printed commands quote it
    main = runpy.run_path(str(ROOT / "build_kernel.py"), run_name="build_kernel")["main"]
    assert main(["--weights-dir", "my weights", "--out", "kernel", "--kaggle-user", "someone"]) == 0
    lines = printed_lines(capsys.readouterr().out)
    assert [" ".join(line.split()[:3]) for line in lines] == [
        "kaggle datasets create",
        "kaggle datasets version",
        "kaggle kernels push",
        "kaggle competitions submit",
    ]
    parsed = [parse(cli, line) for line in lines]
    assert parsed[0].folder == parsed[1].folder == "my weights" and parsed[1].version_notes
    assert parsed[2].folder == "kernel" and parsed[3].message == "steel-seg-kernel version N"
    assert str(tmp_path) not in "\n".join(lines)  # relative, as typed


def test_the_lines_in_messages_parse(cli, tmp_path):
    result = bundle.build(make_weights(tmp_path / "w"), tmp_path / "k", TEMPLATE, bundle.KaggleIds(user="u"))
    texts = [bundle.summary(result), devices.machine_shape_advice("Tesla P100"), devices.no_gpu_message()]
    lines = [line for text in texts for line in printed_lines(text)]
    assert len(lines) >= 5
    for line in lines:
        parse(cli, line)
