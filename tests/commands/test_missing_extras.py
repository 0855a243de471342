"""A missing optional dependency is one line naming the extra to install, exit status 2, through the real CLI.

Each test hides modules by setting `sys.modules[name] = None`, which makes `import name` fail as it does
where the package is not installed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from scail2 import bundled
from scail2.cli import main
from scail2.commands import demo as demo_command
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from tests.pipelines.media import moving_square_frames, write_reference, write_reference_mask, write_video

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture
def hide(monkeypatch):
    """hide("av", ...): those packages (and their submodules) cannot be imported for the test's duration."""

    def hide_modules(*names: str) -> None:
        for name in names:
            for loaded in [key for key in sys.modules if key.startswith(f"{name}.")]:
                monkeypatch.setitem(sys.modules, loaded, None)
            monkeypatch.setitem(sys.modules, name, None)

    return hide_modules


def run_cli(capsys, command: str) -> tuple[int, str]:
    """`scail2 <command>` in this process: (exit status, stderr)."""
    status = main(shlex.split(command))
    return status, capsys.readouterr().err


def assert_one_line(err: str, expected: str) -> None:
    assert err.splitlines() == [expected]


VIDEO_LINE = "scail2 {} needs PyAV ({}): pip install 'scail2[video]'"
TRAIN_LINE = "scail2 {} needs {} ({}): pip install 'scail2[train]'"


@pytest.mark.parametrize("verb", ["animate", "replace"])
def test_animate_without_pyav(verb, hide, capsys, tmp_path):
    hide("av")
    status, err = run_cli(capsys, f"{verb} --ref r.png --driving d.mp4 --out {tmp_path / 'o.mp4'}")
    assert status == 2
    assert_one_line(err, VIDEO_LINE.format(verb, "reading the driving video and writing the output video"))


@pytest.mark.parametrize(
    "command",
    [
        "animate --model MODEL --ref r.png --driving d.mp4 --out o.mp4",
        "demo --model MODEL",
        "eval --model MODEL",
        "cache --data d --model MODEL --out c",
        "prefs --data d --out p --model MODEL",
    ],
)
def test_a_model_with_a_text_encoder_without_ftfy(command, hide, capsys, tmp_path):
    (tmp_path / "model" / "text_encoder").mkdir(parents=True)
    hide("ftfy")
    status, err = run_cli(capsys, command.replace("MODEL", str(tmp_path / "model")))
    assert status == 2
    verb = command.split()[0]
    expected = f"scail2 {verb} needs ftfy (cleaning prompts for the model's text encoder): pip install 'scail2[text]'"
    assert_one_line(err, expected)


def test_the_bundled_model_needs_no_text_extra(tiny_model, hide, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bundled, "BUNDLED_MODEL", tiny_model)
    monkeypatch.setattr(bundled, "BUNDLED_SIZE", (32, 32))
    one_step = SamplingSettings(sampler="euler", steps=1, guidance_scale=1.0, segment_length=5, overlap=1)
    monkeypatch.setattr(bundled, "BUNDLED_SAMPLING", one_step)
    driving = write_video(tmp_path / "driving.mp4", moving_square_frames(5, 48, 48), fps=24)
    ref, ref_mask = write_reference(tmp_path / "ref.png", 40, 40), write_reference_mask(tmp_path / "mask.png", 40, 40)
    hide("ftfy", "sentencepiece")
    status, err = run_cli(
        capsys, f"animate --ref {ref} --ref-mask {ref_mask} --driving {driving} --out {tmp_path / 'o.mp4'}"
    )
    assert status == 0, err
    assert (tmp_path / "o.mp4").is_file()


def test_masks_and_demo_without_pyav(hide, capsys, tmp_path):
    hide("av")
    status, err = run_cli(capsys, f"masks --driving d.mp4 --out {tmp_path / 'masks'}")
    assert status == 2
    assert_one_line(err, VIDEO_LINE.format("masks", "reading the driving video"))
    status, err = run_cli(capsys, f"demo --out {tmp_path / 'demo'}")
    assert status == 2
    assert_one_line(err, VIDEO_LINE.format("demo", "writing the demo videos"))
    assert not (tmp_path / "demo").exists()


def test_synth_without_webdataset_writes_previews_but_not_shards(hide, capsys, tmp_path):
    hide("webdataset")
    status, err = run_cli(capsys, f"synth --out {tmp_path / 'data'} --num 1")
    assert status == 2
    assert_one_line(err, TRAIN_LINE.format("synth", "webdataset", "writing the dataset's shards"))
    assert not (tmp_path / "data").exists()
    preview = tmp_path / "sheet.png"
    status, err = run_cli(capsys, f"synth --preview {preview} --num 1 --size 32 --frames 5")
    assert status == 0 and preview.is_file(), err


@pytest.mark.parametrize(
    "command, purpose",
    [
        ("cache --data d --model m --out c", "reading the dataset's shards"),
        ("prefs --data d --out p --procedural", "reading and writing dataset shards"),
        (f"train-vae --data d --out r --config {CONFIG.with_name('demo_vae.yaml')}", "reading the dataset's shards"),
    ],
)
def test_data_verbs_without_webdataset(command, purpose, hide, capsys):
    hide("webdataset")
    status, err = run_cli(capsys, command)
    assert status == 2
    assert_one_line(err, TRAIN_LINE.format(command.split()[0], "webdataset", purpose))


@pytest.mark.parametrize(
    "missing, overrides, line",
    [
        ("tensorboard", "", ("tensorboard", "training logs")),
        ("peft", "lora.rank=4", ("peft", "LoRA training")),
        ("peft", "--stage dpo", ("peft", "LoRA training")),
        ("yaml", "", ("PyYAML", "reading training configs")),
    ],
)
def test_train_without_its_extras(missing, overrides, line, hide, capsys, tmp_path):
    hide(missing)
    status, err = run_cli(
        capsys, f"train --config {CONFIG} --data {tmp_path / 'cache'} --out {tmp_path / 'run'} {overrides}"
    )
    assert status == 2
    assert_one_line(err, TRAIN_LINE.format("train", *line))
    assert not (tmp_path / "run").exists()


def test_an_optional_module_imported_without_require_still_gives_the_line(monkeypatch, capsys):
    def run(args):
        import gradio  # noqa: F401  (hidden below)

    monkeypatch.setattr(demo_command, "run", run)
    monkeypatch.setitem(sys.modules, "gradio", None)
    status, err = run_cli(capsys, "demo")
    assert status == 2
    assert_one_line(err, "scail2 demo needs gradio: pip install 'scail2[app]'")


def test_a_missing_core_module_is_a_bug_and_keeps_its_traceback(monkeypatch):
    def run(args):
        raise ModuleNotFoundError("No module named 'scail2_helper'", name="scail2_helper")

    monkeypatch.setattr(demo_command, "run", run)
    with pytest.raises(ModuleNotFoundError, match="scail2_helper"):
        main(["demo"])
