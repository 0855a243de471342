"""`--preset distill` (4 Euler steps at shift 5, no guidance) and `--lora-mode`, through the library and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scail2 import animate as animate_module
from scail2.animate import load_pipeline, sampling_settings
from scail2.cli import build_parser, main
from scail2.diffusion.samplers import FlowSampler
from scail2.errors import Scail2Error
from scail2.models.lora_unfused import TERMS
from scail2.pipelines.pipeline_scail2 import SAMPLING_PRESETS
from tests.models.test_lora_unfused import lightx2v_lora
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)
from tests.pipelines.pinned.regenerate import pinned_inputs

CPU = torch.device("cpu")
DISTILL = SAMPLING_PRESETS["distill"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline(seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_file(model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "distill.safetensors"
    save_file(lightx2v_lora(load_pipeline(model_dir, CPU).transformer, seed=1), path)
    return path


def test_distill_preset_samples_the_timesteps_the_distill_loras_were_trained_on():
    assert (DISTILL.sampler, DISTILL.steps, DISTILL.shift, DISTILL.guidance_scale) == ("euler", 4, 5.0, 1.0)
    sampler = FlowSampler(DISTILL.sampler, DISTILL.steps, DISTILL.shift)
    # 1000, 750, 500, 250 on the training grid, shifted by 5
    torch.testing.assert_close(sampler.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    assert sampler.sigmas[-1] == 0


def test_the_cli_offers_every_preset_and_flags_override_its_fields():
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices["animate"]._actions if a.dest == "preset")
    assert list(action.choices) == list(SAMPLING_PRESETS)
    args = parser.parse_args(["animate", "--ref", "r", "--driving", "d", "--out", "o", "--preset", "distill"])
    assert (args.preset, args.lora_mode) == ("distill", "fused")
    assert sampling_settings("distill", use_bundled=False) == DISTILL
    assert sampling_settings("distill", use_bundled=True, steps=6) == dataclasses.replace(DISTILL, steps=6)


def test_distill_preset_runs_one_unguided_forward_per_step(model_dir):
    pipeline = load_pipeline(model_dir, CPU)
    batches = []
    pipeline.transformer.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    settings = dataclasses.replace(DISTILL, segment_length=9)
    pipeline(pinned_inputs(5, "animate"), settings, seed=0, progress=False)
    assert batches == [1] * DISTILL.steps


def test_load_pipeline_applies_loras_unfused_or_refuses_an_unknown_mode(model_dir, lora_file):
    fused = load_pipeline(model_dir, CPU, [str(lora_file)])
    unfused = load_pipeline(model_dir, CPU, [str(lora_file)], lora_mode="unfused")
    plain = load_pipeline(model_dir, CPU)
    layer = "blocks.0.self_attn.q"
    assert not hasattr(fused.transformer.get_submodule(layer), TERMS)
    assert hasattr(unfused.transformer.get_submodule(layer), TERMS)
    assert torch.equal(unfused.transformer.get_submodule(layer).weight, plain.transformer.get_submodule(layer).weight)
    run = dict(seed=3, progress=False, output_type="pt")
    settings = dataclasses.replace(DISTILL, segment_length=9)
    torch.testing.assert_close(
        unfused(pinned_inputs(5, "animate"), settings, **run).frames,
        fused(pinned_inputs(5, "animate"), settings, **run).frames,
        rtol=0,
        atol=1e-4,
    )
    with pytest.raises(Scail2Error, match=r"^--lora-mode 'lazy' is not one of fused, unfused$"):
        load_pipeline(model_dir, CPU, [str(lora_file)], lora_mode="lazy")


def test_cli_distill_preset_with_an_unfused_lora(model_dir, lora_file, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(
        animate_module, "load_pipeline", lambda *a, **k: loaded.append(load_pipeline(*a, **k)) or loaded[-1]
    )
    files = {
        "--ref": write_reference(tmp_path / "ref.png", 90, 140),
        "--ref-mask": write_reference_mask(tmp_path / "ref_mask.png", 90, 140),
        "--driving": write_video(tmp_path / "driving.mp4", moving_square_frames(5, 72, 120), fps=24),
        "--driving-mask": write_mask_folder(tmp_path / "masks", square_masks(5, 72, 120)),
    }
    out = tmp_path / "out.mp4"
    args = ["animate", "--model", str(model_dir), "--out", str(out), "--height", "64", "--width", "96"]
    args += [str(x) for pair in files.items() for x in pair]
    args += ["--preset", "distill", "--segment-length", "9", "--lora", f"{lora_file}:0.5", "--lora-mode", "unfused"]
    assert main(args) == 0
    (pipeline,) = loaded
    assert hasattr(pipeline.transformer.get_submodule("blocks.1.ffn.0"), TERMS)
    request = json.loads(out.with_suffix(".json").read_text())["request"]
    assert request["lora_mode"] == "unfused" and request["loras"] == [f"{lora_file}:0.5"]
    assert request["settings"] == dataclasses.asdict(dataclasses.replace(DISTILL, segment_length=9))


def test_cli_distill_preset_without_a_lora_says_what_it_expects(monkeypatch, capsys, tmp_path):
    requests = []
    monkeypatch.setattr(animate_module, "run_animate", lambda request: requests.append(request) or manifest())
    args = ["animate", "--ref", "r.png", "--driving", "d.mp4", "--out", str(tmp_path / "o.mp4"), "--model", "m"]
    monkeypatch.setattr("scail2.commands.require_text_dependencies", lambda model: None)
    assert main([*args, "--preset", "distill"]) == 0
    assert "--preset distill samples 4 steps without guidance, made for a step-distill LoRA" in capsys.readouterr().out
    assert requests[0].settings == DISTILL


def manifest() -> dict:
    return {"output": "o.mp4", "frames": 1, "fps": "24", "timings_s": {"wall_s": 0.0}}
