"""`scail2 convert all` on a tiny release laid out as the official one: every component, resume, missing files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from scail2.cli import main
from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline
from tests.models.helpers import tiny_model, to_sat_layout
from tests.models.test_convert_components import (
    CLIP_TINY,
    UMT5_TINY,
    official_clip_state_dict,
    official_umt5_state_dict,
    official_vae_key,
    randomize,
    tiny_tokenizer,
)

CLIP_224 = {**CLIP_TINY, "image_size": 224}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release") / "SCAIL-2"
    (root / "model" / "1").mkdir(parents=True)
    (root / "model" / "latest").write_text("1\n")
    transformer = tiny_model(seed=2, text_dim=UMT5_TINY["d_model"], image_dim=CLIP_TINY["hidden_size"])
    np.random.seed(0)
    torch.save(
        {"module": to_sat_layout(transformer.state_dict()), "np_rng": np.random.get_state()},
        root / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt",
    )
    from diffusers import AutoencoderKLWan

    vae = randomize(AutoencoderKLWan(base_dim=8), seed=3)  # the official architecture, narrow
    torch.save({official_vae_key(k): v.clone() for k, v in vae.state_dict().items()}, root / "Wan2.1_VAE.pth")
    umt5 = randomize(UMT5EncoderModel(UMT5Config(**UMT5_TINY)), seed=4)
    (root / "umt5-xxl").mkdir()
    torch.save(official_umt5_state_dict(umt5), root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth")
    tiny_tokenizer().save_pretrained(root / "umt5-xxl")
    clip = randomize(CLIPVisionModel(CLIPVisionConfig(**CLIP_224)), seed=5)
    torch.save(
        official_clip_state_dict(clip), root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth"
    )
    return root, {"transformer": transformer, "vae": vae, "text_encoder": umt5, "image_encoder": clip}


def test_convert_all_loads_as_a_pipeline_with_identical_weights(release, tmp_path):
    root, originals = release
    out = tmp_path / "pipeline"
    assert (
        main(["convert", "all", "--official-dir", str(root), "--out", str(out), "--config", "tiny", "--dtype", "fp32"])
        == 2
    )  # tiny preset has text_dim 20, the release's umT5 width is 16
    config = tmp_path / "tiny16.json"
    config.write_text(
        '{"dim": 32, "ffn_dim": 56, "num_heads": 2, "num_layers": 2, "freq_dim": 18, '
        '"text_dim": 16, "text_len": 7, "image_dim": 24}'
    )
    assert (
        main(
            [
                "convert",
                "all",
                "--official-dir",
                str(root),
                "--out",
                str(out),
                "--config",
                str(config),
                "--dtype",
                "fp32",
                "--clip-heads",
                "2",
            ]
        )
        == 0
    )
    pipe = SCAIL2Pipeline.from_pretrained(out)
    for name, original in originals.items():
        loaded = getattr(pipe, name).state_dict()
        for key, value in original.state_dict().items():
            torch.testing.assert_close(loaded[key].float(), value.float(), rtol=0, atol=0, msg=f"{name}.{key}")
    assert pipe.tokenizer("a cat walks").input_ids[-1] == pipe.tokenizer.eos_token_id


def test_interrupted_conversion_resumes_and_skips_finished_components(release, tmp_path, monkeypatch):
    import scail2.models.convert_release as release_module

    root, _ = release
    config = tmp_path / "tiny16.json"
    config.write_text(
        '{"dim": 32, "ffn_dim": 56, "num_heads": 2, "num_layers": 2, "freq_dim": 18, '
        '"text_dim": 16, "text_len": 7, "image_dim": 24}'
    )
    out = tmp_path / "pipeline"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(release_module, "convert_clip", interrupted)
    assert main(["convert", "all", "--official-dir", str(root), "--out", str(out), "--config", str(config)]) == 130
    staging = tmp_path / ".pipeline.staging"
    assert not out.exists() and sorted(p.name for p in staging.iterdir()) == [
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    ]
    monkeypatch.undo()
    calls = []
    original = release_module.convert_vae
    monkeypatch.setattr(release_module, "convert_vae", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert (
        main(
            [
                "convert",
                "all",
                "--official-dir",
                str(root),
                "--out",
                str(out),
                "--config",
                str(config),
                "--clip-heads",
                "2",
            ]
        )
        == 0
    )
    assert calls == [] and not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "image_encoder",
        "model_index.json",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    ]


def test_missing_release_files_are_listed(tmp_path, capsys):
    root = tmp_path / "SCAIL-2"
    (root / "umt5-xxl").mkdir(parents=True)
    (root / "Wan2.1_VAE.pth").write_bytes(b"")
    assert main(["convert", "all", "--official-dir", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model/1/fsdp2_rank_0000_checkpoint.pt" in err and "models_clip_open-clip" in err
    assert "umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth" in err and "Wan2.1_VAE.pth," not in err


def test_converted_release_generates(release, tmp_path):
    from scail2.conditioning import AnimationInputs
    from scail2.pipelines.pipeline_scail2 import SamplingSettings

    root, _ = release
    config = tmp_path / "tiny16.json"
    config.write_text(
        '{"dim": 32, "ffn_dim": 56, "num_heads": 2, "num_layers": 2, "freq_dim": 18, '
        '"text_dim": 16, "text_len": 7, "image_dim": 24}'
    )
    out = tmp_path / "pipeline"
    assert (
        main(
            [
                "convert",
                "all",
                "--official-dir",
                str(root),
                "--out",
                str(out),
                "--config",
                str(config),
                "--clip-heads",
                "2",
            ]
        )
        == 0
    )
    pipe = SCAIL2Pipeline.from_pretrained(out)
    inputs = AnimationInputs(
        reference=torch.zeros(3, 32, 64),
        reference_mask=torch.ones(3, 32, 64),
        driving=torch.zeros(5, 32, 64, 3, dtype=torch.uint8),
        driving_masks=torch.zeros(5, 32, 64, 3, dtype=torch.uint8),
        prompt="a cat walks",
    )
    result = pipe(inputs, SamplingSettings(sampler="euler", steps=1, guidance_scale=2.0), progress=False)
    assert result.frames.shape == (5, 32, 64, 3)
