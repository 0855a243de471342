"""`scail2 convert transformer`: round trips from every input layout, strictness, and atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from scail2.cli import main
from scail2.models.convert import detect_format
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from tests.models.helpers import tiny_inputs, tiny_model, to_mlx_layout, to_sat_layout

UPSTREAM_STYLE_TINY_CONFIG = {
    "model_type": "i2v",
    "patch_size": [1, 2, 2],
    "text_len": 7,
    "in_dim": 20,
    "mask_dim": 28,
    "dim": 32,
    "ffn_dim": 56,
    "freq_dim": 18,
    "text_dim": 20,
    "out_dim": 16,
    "num_heads": 2,
    "num_layers": 2,
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "window_size": [-1, -1],
    "pose_rope_shift": [0, 0, 120],
    "image_dim": 24,
}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7)


def write_release_checkpoint(state: dict, path: Path) -> Path:
    """The official training-checkpoint layout: SAT keys under `module`, plus RNG and client state."""
    np.random.seed(0)
    torch.save(
        {
            "module": to_sat_layout(state),
            "iteration": 3500,
            "np_rng_state": np.random.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "client_state": {"lr": 1e-5},
        },
        path,
    )
    return path


def write_input(layout: str, state: dict, folder: Path) -> Path:
    if layout == "sat":
        return write_release_checkpoint(state, folder / "fsdp2_rank_0000_checkpoint.pt")
    if layout == "wan-safetensors-prefixed":
        path = folder / "scail2_comfy.safetensors"
        save_file({"diffusion_model." + k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    if layout == "wan-pth":
        path = folder / "scail2.pth"
        torch.save(state, path)
        return path
    if layout == "mlx":
        path = folder / "dit.safetensors"
        save_file(to_mlx_layout(state), str(path))
        return path
    raise ValueError(layout)


def convert(args: list[str]) -> int:
    return main(["convert", "transformer", *args])


@pytest.mark.parametrize("layout", ["sat", "wan-safetensors-prefixed", "wan-pth", "mlx"])
def test_every_layout_round_trips_to_identical_weights_and_outputs(layout, model, tmp_path):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    source = write_input(layout, state, tmp_path)
    out = tmp_path / "converted"
    # a tiny shard cap forces several shards and the index file
    assert (
        convert(
            [
                "--input",
                str(source),
                "--config",
                "tiny",
                "--out",
                str(out),
                "--dtype",
                "fp32",
                "--max-shard-size",
                "0.00005",
            ]
        )
        == 0
    )
    assert (out / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list(out.glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 2
    loaded = SCAIL2Transformer3DModel.from_pretrained(out).eval()
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0, msg=key)
    inputs = tiny_inputs(model, history=True)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs, replace=True).sample, model(**inputs, replace=True).sample, rtol=0, atol=0
        )


def test_layout_detection():
    state = tiny_model().state_dict()
    assert detect_format(list(to_sat_layout(state))) == "sat"
    assert detect_format(list(to_mlx_layout(state))) == "mlx"
    assert detect_format(list(state)) == "wan"
    assert detect_format(["model.diffusion_model." + k for k in state]) == "wan"


def test_upstream_config_json_and_bf16_storage(model, tmp_path):
    config = tmp_path / "config-tiny.json"
    config.write_text(json.dumps(UPSTREAM_STYLE_TINY_CONFIG))
    source = write_input("sat", model.state_dict(), tmp_path)
    out = tmp_path / "bf16"
    assert convert(["--input", str(source), "--config", str(config), "--out", str(out)]) == 0
    stored = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert stored["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    for fp32_key in (
        "blocks.1.modulation",
        "head.modulation",
        "time_projection.1.weight",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.0.norm3.bias",
    ):
        assert stored[fp32_key].dtype == torch.float32, fp32_key
    loaded = SCAIL2Transformer3DModel.from_pretrained(out).eval()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        fp32 = model(**inputs).sample
        bf16 = loaded.float()(**inputs).sample
    assert (bf16 - fp32).norm() / fp32.norm() < 2e-2


def _assert_fails_cleanly(capsys, args, out: Path, *fragments: str) -> str:
    assert convert(args) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]
    return message


def test_missing_and_unexpected_keys_are_reported_and_nothing_is_written(model, tmp_path, capsys):
    state = dict(model.state_dict())
    del state["blocks.1.ffn.2.weight"]
    for i in range(12):
        state[f"extra.{i}.weight"] = torch.zeros(1)
    source = write_input("wan-pth", state, tmp_path)
    out = tmp_path / "out"
    message = _assert_fails_cleanly(
        capsys,
        ["--input", str(source), "--config", "tiny", "--out", str(out)],
        out,
        "1 missing: blocks.1.ffn.2.weight",
        "12 unexpected: extra.0.weight",
        str(source),
    )
    assert message.count("extra.") == 10 and "(and 2 more)" in message


def test_sat_key_outside_the_table_is_unexpected(model, tmp_path, capsys):
    sat = to_sat_layout(model.state_dict())
    sat["model.diffusion_model.mixins.pos_embed.freqs"] = torch.zeros(4)
    source = tmp_path / "ckpt.pt"
    torch.save({"module": sat}, source)
    out = tmp_path / "out"
    _assert_fails_cleanly(
        capsys,
        ["--input", str(source), "--config", "tiny", "--out", str(out)],
        out,
        "1 unexpected: model.diffusion_model.mixins.pos_embed.freqs",
    )


def test_wrong_config_reports_shape_mismatches(model, tmp_path, capsys):
    source = write_input("wan-pth", model.state_dict(), tmp_path)
    config = tmp_path / "wrong.json"
    config.write_text(json.dumps({**UPSTREAM_STYLE_TINY_CONFIG, "ffn_dim": 64}))
    out = tmp_path / "out"
    _assert_fails_cleanly(
        capsys,
        ["--input", str(source), "--config", str(config), "--out", str(out)],
        out,
        "with the wrong shape: blocks.0.ffn.0.bias (56,) vs (64,)",
    )


@pytest.mark.parametrize(
    "make_input, fragment",
    [
        (lambda d: d / "absent.pt", "transformer checkpoint not found"),
        (
            lambda d: (d / "garbage.pt").write_bytes(b"not a checkpoint" * 10) and d / "garbage.pt",
            "transformer checkpoint cannot be read",
        ),
    ],
)
def test_unreadable_inputs(make_input, fragment, tmp_path, capsys):
    source = make_input(tmp_path)
    out = tmp_path / "out"
    _assert_fails_cleanly(capsys, ["--input", str(source), "--config", "tiny", "--out", str(out)], out, fragment)


def test_unknown_config_field_and_existing_output(model, tmp_path, capsys):
    source = write_input("wan-pth", model.state_dict(), tmp_path)
    config = tmp_path / "odd.json"
    config.write_text(json.dumps({**UPSTREAM_STYLE_TINY_CONFIG, "num_experts": 8}))
    out = tmp_path / "out"
    _assert_fails_cleanly(
        capsys,
        ["--input", str(source), "--config", str(config), "--out", str(out)],
        out,
        "unknown config field(s) num_experts",
    )
    out.mkdir()
    assert convert(["--input", str(source), "--config", "tiny", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert(["--input", str(source), "--config", "tiny", "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").exists()


def test_console_entry_exits_non_zero_on_bad_input(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scail2.cli",
            "convert",
            "transformer",
            "--input",
            str(tmp_path / "none.pt"),
            "--config",
            "tiny",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("scail2 convert: error:") and "none.pt" in result.stderr
