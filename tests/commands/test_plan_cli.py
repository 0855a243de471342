"""`scail2 plan` through the real CLI: the table per phase, the options it picks per card, and the one-line
refusal with exit status 2."""

from __future__ import annotations

import torch

from scail2.cli import main
from scail2.pipelines.memory_inventory import write_config_folder


def test_plan_prints_the_phases_and_the_options_for_one_card(tmp_path, capsys):
    folder = write_config_folder(tmp_path / "scail2_14b")
    assert main(["plan", "--model", str(folder), "--height", "512", "--width", "896", "--frames", "81",
                 "--gpu-memory", "24"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "81 frames at 512x896 (1 segment(s) of 81 frames, 48,832 tokens, guided)" in out
    assert "options: bf16, group offload, batched CFG  (--offload group)" in out
    for phase in ("text encoder", "image encoder", "vae encode", "denoise", "vae decode"):
        assert f"| {phase} |" in out
    # with group offload the denoise needs 9.5 GiB; umT5-XXL, on the GPU while it encodes, is the peak
    assert "| **GPU peak** (text encoder) | | | **10.7** of 21.8 usable |" in out
    assert "| host RAM |" in out


def test_plan_compares_cards_in_one_table(capsys):
    assert main(["plan", "--model", "14b", "--gpu-memory", "24", "48", "80"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| GPU | options picked |")
    assert rows[1].startswith("| 24 GiB | bf16, group offload, batched CFG | `--offload group` |")
    assert rows[2].startswith("| 48 GiB | bf16, batched CFG | (defaults) |")
    assert rows[3].startswith("| 80 GiB | bf16, batched CFG | (defaults) |")


def test_without_guidance_one_pass_fits_a_48_gib_card_as_it_is(capsys):
    assert main(["plan", "--model", "14b", "--gpu-memory", "48", "--cfg", "1"]) == 0
    out = capsys.readouterr().out
    assert "no guidance" in out and "options: bf16, batched CFG\n" in out


def test_options_given_on_the_command_line_are_kept(capsys):
    assert main(["plan", "--model", "14b", "--gpu-memory", "24", "--quantize", "fp8", "--vae-tiling"]) == 0
    assert "options: fp8, sequential CFG, VAE tiling" in capsys.readouterr().out


def test_a_job_that_cannot_fit_is_refused_in_one_line_with_the_fix(capsys):
    assert main(["plan", "--model", "14b", "--gpu-memory", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("scail2 plan: error: 14b: 81 frames at 512x896 needs 4.0 GiB of GPU memory")
    assert "it fits at --height 384 --width 672" in lines[0]


def test_without_a_gpu_the_plan_of_the_given_options_is_printed_unchecked(tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["plan", "--model", str(tiny_model), "--height", "64", "--width", "96", "--frames", "17"]) == 0
    out = capsys.readouterr().out
    assert "no guidance" in out and "| weights MiB |" in out and "| text encoder |" not in out
    assert "no CUDA device found" in out


def test_a_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["plan", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
