"""`scail2 animate` on fp8 weights: a model folder whose transformer `scail2 convert transformer --dtype fp8` wrote,
and `--quantize fp8` on a plain folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scail2.animate import load_pipeline
from scail2.cli import main
from scail2.models.quantize import FP8Linear
from scail2.preprocess.video_io import read_video
from tests.commands.test_animate_default_model import animate, files  # noqa: F401  (the input files fixture)

FAST = ["--sampler", "euler", "--steps", "1", "--height", "32", "--width", "64", "--segment-length", "9"]


def fp8_layers(pipeline) -> int:
    return sum(isinstance(module, FP8Linear) for module in pipeline.transformer.modules())


@pytest.fixture
def fp8_model(tiny_model, tmp_path):
    """A copy of the tiny model folder whose transformer is converted to fp8 in place."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    transformer = folder / "transformer"
    args = ["--input", str(transformer / "diffusion_pytorch_model.safetensors"), "--config"]
    args += [str(transformer / "config.json"), "--out", str(transformer), "--dtype", "fp8", "--overwrite"]
    assert main(["convert", "transformer", *args]) == 0
    assert json.loads((transformer / "config.json").read_text())["quantization"]["method"] == "fp8"
    return folder


def test_animate_runs_on_a_converted_fp8_folder(fp8_model, files, tmp_path):  # noqa: F811
    assert fp8_layers(load_pipeline(fp8_model, torch.device("cpu"))) == 2 * 10  # t2v: no k_img / v_img
    out = tmp_path / "o.mp4"
    assert animate(files, out, "--model", str(fp8_model), *FAST) == 0
    assert read_video(out).frames.shape[0] == 11


def test_quantize_fp8_quantises_a_plain_folder_at_load(tiny_model, files, tmp_path):  # noqa: F811
    assert fp8_layers(load_pipeline(tiny_model, torch.device("cpu"))) == 0
    assert fp8_layers(load_pipeline(tiny_model, torch.device("cpu"), quantize="fp8")) == 20
    out = tmp_path / "o.mp4"
    assert animate(files, out, "--model", str(tiny_model), "--quantize", "fp8", *FAST) == 0
    assert json.loads(out.with_suffix(".json").read_text())["request"]["quantize"] == "fp8"
