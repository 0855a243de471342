"""Generation end to end with tiny random components: modes, lengths, frame rates, audio, segments, bad input."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from scail2.cli import main
from scail2.conditioning import AnimationInputs
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline
from scail2.pipelines.segments import plan_segments
from scail2.preprocess.video_io import probe_video, read_video
from tests.pipelines.components import tiny_pipeline
from tests.pipelines.media import (
    TWO_IDENTITIES,
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)

H, W = 64, 96  # generation size; inputs are larger and of another aspect so resize-and-crop runs
FAST = ["--height", str(H), "--width", str(W), "--sampler", "euler", "--steps", "2", "--cfg", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 14-frame driving video with audio, its binary masks, a reference and its mask."""
    root = tmp_path_factory.mktemp("inputs")
    frames = moving_square_frames(14, 72, 120)
    return {
        "driving": write_video(root / "driving.mp4", frames, fps=24, audio_seconds=1.0),
        "masks": write_mask_folder(root / "masks", square_masks(14, 72, 120)),
        "ref": write_reference(root / "ref.png", 90, 140),
        "ref_mask": write_reference_mask(root / "ref_mask.png", 90, 140),
        "ref_rgba": write_reference(root / "ref_rgba.png", 90, 140, rgba=True),
    }


def animate(model_dir, files, out, *extra) -> int:
    args = [
        "animate",
        "--model",
        str(model_dir),
        "--ref",
        str(files["ref"]),
        "--ref-mask",
        str(files["ref_mask"]),
        "--driving",
        str(files["driving"]),
        "--driving-mask",
        str(files["masks"]),
        "--out",
        str(out),
        *FAST,
    ]
    return main(args + list(extra))


# ---------------------------------------------------------------------------------------------------------
# Modes and outputs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_each_mode_end_to_end_keeps_frames_fps_and_audio(mode, model_dir, files, tmp_path):
    out = tmp_path / f"{mode}.mp4"
    assert (
        animate(
            model_dir,
            files,
            out,
            "--mode",
            mode,
            "--prompt",
            "a fox dances",
            "--cfg",
            "3",
            "--frames-dir",
            str(tmp_path / "png"),
        )
        == 0
    )
    info = probe_video(out)
    assert (info.width, info.height, info.fps, info.has_audio) == (W, H, Fraction(24), True)
    assert read_video(out).frames.shape[0] == 14
    assert len(list((tmp_path / "png").glob("*.png"))) == 14
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["frames"] == 14 and manifest["fps"] == "24" and manifest["request"]["mode"] == mode
    assert manifest["request"]["settings"]["guidance_scale"] == 3.0 and manifest["model_fingerprint"]


def test_replace_shortcut_and_rgba_reference(model_dir, files, tmp_path):
    out = tmp_path / "r.mp4"
    args = [
        "replace",
        "--model",
        str(model_dir),
        "--ref",
        str(files["ref_rgba"]),
        "--driving",
        str(files["driving"]),
        "--driving-mask",
        str(files["masks"]),
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    assert json.loads(out.with_suffix(".json").read_text())["request"]["mode"] == "replace"


def test_multi_character_palette_masks_and_extra_reference(model_dir, files, tmp_path):
    masks = write_mask_folder(tmp_path / "masks2", square_masks(14, 72, 120, colors=TWO_IDENTITIES))
    ref_mask = write_reference_mask(
        tmp_path / "ref_mask2.png", 90, 140, colors=TWO_IDENTITIES, background=(255, 255, 255)
    )
    out = tmp_path / "multi.mp4"
    assert (
        animate(model_dir, {**files, "masks": masks, "ref_mask": ref_mask}, out, "--extra-ref", str(files["ref_rgba"]))
        == 0
    )
    assert read_video(out).frames.shape[0] == 14


@pytest.mark.parametrize(
    "num_frames, fps",
    [(1, Fraction(24)), (81, Fraction(30000, 1001)), (82, Fraction(12)), (163, Fraction(25)), (200, Fraction(24))],
)
def test_output_has_exactly_the_driving_frame_count_and_rate(num_frames, fps, model_dir, tmp_path):
    frames = moving_square_frames(num_frames, 64, 96)
    files = {
        "driving": write_video(tmp_path / "d.mp4", frames, fps=fps),
        "masks": write_mask_folder(tmp_path / "m", square_masks(num_frames, 64, 96)),
        "ref": write_reference(tmp_path / "r.png", 64, 96),
        "ref_mask": write_reference_mask(tmp_path / "rm.png", 64, 96),
    }
    out = tmp_path / "o.mp4"
    assert animate(model_dir, files, out, "--steps", "1") == 0
    info = probe_video(out)
    assert info.fps == fps and not info.has_audio
    assert read_video(out).frames.shape[0] == num_frames
    segments = json.loads(out.with_suffix(".json").read_text())["segments"]
    assert len(segments) == len(plan_segments(num_frames))


def test_same_seed_same_video_and_other_seed_differs(model_dir, files, tmp_path):
    outputs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert (
            animate(model_dir, files, tmp_path / f"{name}.mp4", "--seed", seed, "--frames-dir", str(tmp_path / name))
            == 0
        )
        outputs.append(
            np.stack(
                [np.asarray(__import__("PIL.Image").Image.open(p)) for p in sorted((tmp_path / name).glob("*.png"))]
            )
        )
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_lora_is_fused_and_changes_the_video(model_dir, files, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    lora = {  # Wan/ComfyUI naming, rank 2, on a self-attention and an FFN projection
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(2, 32, generator=g),
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(32, 2, generator=g),
        "diffusion_model.blocks.1.ffn.2.lora_down.weight": torch.randn(2, 56, generator=g),
        "diffusion_model.blocks.1.ffn.2.lora_up.weight": torch.randn(32, 2, generator=g),
    }
    save_file(lora, str(tmp_path / "style.safetensors"))
    frames = {}
    for name, extra in (("plain", []), ("lora", ["--lora", f"{tmp_path / 'style.safetensors'}:0.5"])):
        assert animate(model_dir, files, tmp_path / f"{name}.mp4", "--frames-dir", str(tmp_path / name), *extra) == 0
        frames[name] = np.stack(
            [np.asarray(__import__("PIL.Image").Image.open(p)) for p in sorted((tmp_path / name).glob("*.png"))]
        )
    assert np.abs(frames["plain"].astype(int) - frames["lora"].astype(int)).max() > 0
    manifest = json.loads((tmp_path / "lora.json").read_text())
    assert manifest["request"]["loras"] == [f"{tmp_path / 'style.safetensors'}:0.5"]


# ---------------------------------------------------------------------------------------------------------
# The pipeline's steps
# ---------------------------------------------------------------------------------------------------------


def random_inputs(num_frames: int, mode: str = "animate", seed: int = 0) -> AnimationInputs:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num_frames, H, W, 3, dtype=torch.uint8)
    masks[:, 16:48, 24:60] = torch.tensor((0, 0, 255), dtype=torch.uint8)
    ref_mask = torch.full((3, H, W), 1.0 if mode == "animate" else -1.0)
    ref_mask[:, 10:50, 30:70] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    return AnimationInputs(
        reference=torch.rand(3, H, W, generator=g) * 2 - 1,
        reference_mask=ref_mask,
        driving=torch.randint(0, 256, (num_frames, H, W, 3), generator=g, dtype=torch.uint8),
        driving_masks=masks,
        mode=mode,
        prompt="a robot walks",
    )


@pytest.fixture(scope="module")
def pipeline() -> SCAIL2Pipeline:
    pipe = tiny_pipeline(seed=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_segmented_generation_equals_segments_built_by_hand(pipeline):
    settings = SamplingSettings(sampler="unipc", steps=3, shift=3.0, guidance_scale=2.0, segment_length=17, overlap=5)
    inputs = random_inputs(40)
    result = pipeline(inputs, settings, seed=11, progress=False)
    assert result.frames.shape == (40, H, W, 3)

    # by hand: 17-frame segments at 0, 12 and 24 (the last holds 16 real frames, padded to 17)
    segments = plan_segments(40, 17, 5)
    assert [(s.start, s.length, s.real_frames) for s in segments] == [(0, 17, 17), (12, 17, 17), (24, 17, 16)]
    text = pipeline.encode_prompts(inputs.prompt, inputs.negative_prompt, settings.guidance_scale)
    reference = pipeline.encode_reference(inputs)
    generator = torch.Generator().manual_seed(11)
    pieces, previous = [], None
    # without autograd, as the pipeline runs: blocks then take their chunked path, equal to the autograd path only
    # up to float rounding (8e-7 on these latents)
    torch.set_grad_enabled(False)
    for segment in segments:
        conditions = pipeline.prepare_segment(inputs, segment)
        history = None
        if previous is not None:
            history = pipeline.codec.encode(previous[None, :, -5:])
            assert history.shape[2] == 2  # 5 pixel frames -> 2 latent frames
        noise = torch.randn(1, 16, (segment.length - 1) // 4 + 1, H // 8, W // 8, generator=generator)
        latent = pipeline.denoise_segment(reference, conditions, text, noise, history, settings, replace=False)
        if history is not None:
            torch.testing.assert_close(latent[:, :, :2], history, rtol=0, atol=0)  # clean history kept exactly
        previous = pipeline.decode_segment(latent)
        pieces.append(previous[:, segment.history_frames : segment.real_frames])
    torch.set_grad_enabled(True)
    by_hand = ((torch.cat(pieces, dim=1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
    assert torch.equal(result.frames, by_hand)


def test_guidance_batches_unconditional_and_conditional_in_one_forward(pipeline):
    settings = SamplingSettings(sampler="euler", steps=1, guidance_scale=4.0, segment_length=5)
    inputs = random_inputs(5)
    text = pipeline.encode_prompts(inputs.prompt, "", 4.0)
    assert text.shape[0] == 2
    reference = pipeline.encode_reference(inputs)
    segment = plan_segments(5, 5, 1)[0]
    conditions = pipeline.prepare_segment(inputs, segment)
    noise = torch.randn(1, 16, 2, H // 8, W // 8)
    guided = pipeline.denoise_segment(reference, conditions, text, noise, None, settings, replace=True)

    calls = []
    original = pipeline.transformer.forward
    try:
        pipeline.transformer.forward = lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k)
        pipeline.denoise_segment(reference, conditions, text, noise, None, settings, replace=True)
    finally:
        pipeline.transformer.forward = original
    assert calls == [2]  # one batched forward per step

    one = SamplingSettings(sampler="euler", steps=1, guidance_scale=1.0, segment_length=5)
    cond = pipeline.denoise_segment(reference, conditions, text[1:], noise, None, one, replace=True)
    uncond = pipeline.denoise_segment(reference, conditions, text[:1], noise, None, one, replace=True)
    # Euler is linear in the velocity, so the guided step is the same combination of the two single steps
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_driving_masks_are_compressed_at_half_resolution(pipeline):
    inputs = random_inputs(5)
    conditions = pipeline.prepare_segment(inputs, plan_segments(5)[0])
    masks = conditions.driving_masks  # [1, 28, 2, 4, 6]
    assert masks.shape == (1, 28, 2, H // 16, W // 16)
    blue = 3
    # the blue box (rows 16:48, cols 24:60 of 64x96) is rows 8:24, cols 12:30 at half resolution; each latent
    # cell covers 8x8 half-resolution pixels, so cells hold the box's area fraction
    box = torch.zeros(32, 48)
    box[8:24, 12:30] = 1
    expected = torch.nn.functional.avg_pool2d(box[None, None], 8)[0, 0]  # area pooling to the 4x6 latent grid
    for sub in range(4):
        torch.testing.assert_close(masks[0, 7 * sub + blue, 1], expected)
        assert masks[0, 7 * sub + 0].abs().sum() == 0  # no white on an animation driving mask
    torch.testing.assert_close(masks[0, blue, 0], expected)  # latent frame 0 = pixel frame 0 four times


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the fix, exit 2, no output left behind
# ---------------------------------------------------------------------------------------------------------


def _fails(capsys, out: Path, code: int, *fragments: str) -> None:
    assert code == 2
    # the denoising progress bar may come first; the error is one whole line of its own, the last one
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("scail2 "), err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]


def test_unreadable_and_empty_inputs(model_dir, files, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 50)
    _fails(capsys, out, animate(model_dir, {**files, "driving": garbage}, out), "broken.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(files["driving"].read_bytes()[:600])
    _fails(capsys, out, animate(model_dir, {**files, "driving": truncated}, out), "truncated.mp4")
    bad_image = tmp_path / "ref.png"
    bad_image.write_bytes(b"png? no")
    _fails(capsys, out, animate(model_dir, {**files, "ref": bad_image}, out), "ref.png", "cannot be read as an image")


def test_masks_shorter_than_the_video(model_dir, files, tmp_path, capsys):
    short = write_mask_folder(tmp_path / "short", square_masks(9, 72, 120))
    out = tmp_path / "o.mp4"
    _fails(capsys, out, animate(model_dir, {**files, "masks": short}, out), "short", "has 9 mask frames", "has 14")


def test_identity_colours_must_match(model_dir, files, tmp_path, capsys):
    two = write_mask_folder(tmp_path / "two", square_masks(14, 72, 120, colors=TWO_IDENTITIES))
    out = tmp_path / "o.mp4"
    _fails(capsys, out, animate(model_dir, {**files, "masks": two}, out), "red")


def test_missing_masks_explain_how_to_supply_them(model_dir, files, tmp_path, capsys):
    """Without mask arguments, masks are extracted automatically; where that cannot work (a still driving
    video: no moving character) the error says how to supply them."""
    still = write_video(tmp_path / "still.mp4", np.repeat(moving_square_frames(14, 72, 120)[:1], 14, axis=0))
    out = tmp_path / "o.mp4"
    args = [
        "animate",
        "--model",
        str(model_dir),
        "--ref",
        str(files["ref"]),
        "--ref-mask",
        str(files["ref_mask"]),
        "--driving",
        str(still),
        "--out",
        str(out),
        *FAST,
    ]
    _fails(capsys, out, main(args), "still.mp4", "--driving-mask")
    automatic = tmp_path / "auto.mp4"
    args = [
        "animate",
        "--model",
        str(model_dir),
        "--ref",
        str(files["ref"]),
        "--ref-mask",
        str(files["ref_mask"]),
        "--driving",
        str(files["driving"]),
        "--out",
        str(automatic),
        *FAST,
    ]
    assert main(args) == 0 and read_video(automatic).frames.shape[0] == 14


def test_sizes_must_be_multiples_of_32(model_dir, files, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    _fails(capsys, out, animate(model_dir, files, out, "--height", "72"), "--height", "72", "multiple of 32")


def test_missing_model_files(model_dir, files, tmp_path, capsys):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    out = tmp_path / "o.mp4"
    args = [
        "animate",
        "--model",
        str(broken),
        "--ref",
        str(files["ref"]),
        "--ref-mask",
        str(files["ref_mask"]),
        "--driving",
        str(files["driving"]),
        "--driving-mask",
        str(files["masks"]),
        "--out",
        str(out),
        *FAST,
    ]
    _fails(capsys, out, main(args), "vae", "missing")
    _fails(capsys, out, main([*args[:2], str(tmp_path / "nowhere"), *args[3:]]), "nowhere", "model_index.json")


def test_wider_latents_run_end_to_end_and_a_mismatched_vae_is_an_error(files, tmp_path, capsys):
    folder = tmp_path / "z24"
    tiny_pipeline(seed=0, text=False, image=False, z_dim=24).save_pretrained(folder)
    out = tmp_path / "o.mp4"
    assert animate(folder, files, out, "--steps", "1") == 0
    assert read_video(out).frames.shape == (14, H, W, 3)

    import shutil

    shutil.rmtree(folder / "vae")
    tiny_pipeline(seed=0, text=False, image=False).vae.save_pretrained(folder / "vae")  # z 16
    _fails(capsys, tmp_path / "m.mp4", animate(folder, files, tmp_path / "m.mp4"), "24", "16 latent channels")


def test_nan_output_is_an_error_and_writes_nothing(files, tmp_path, capsys):
    pipe = tiny_pipeline(seed=0)
    with torch.no_grad():
        pipe.transformer.head.head.bias.fill_(float("nan"))
    folder = tmp_path / "nan_model"
    pipe.save_pretrained(folder)
    out = tmp_path / "o.mp4"
    _fails(capsys, out, animate(folder, files, out), "NaN")
