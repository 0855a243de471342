"""The weight-free method on procedural clips with exact masks, tracking through crossings, the filters
against plain references, refinements, still-image references and the SAM 2 code path (tiny random model)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error
from scail2.preprocess.segmentation import camera
from scail2.preprocess.segmentation.colour_model import colour_bins, fit_histogram
from scail2.preprocess.segmentation.extract import (
    MaskSettings,
    MotionMasks,
    Sam2Masks,
    reference_identities,
    split_left_to_right,
)
from scail2.preprocess.segmentation.filters import (
    as_float_images,
    box_mean,
    fill_holes,
    gaussian_blur,
    guided_filter,
    guided_upsample,
    label_components,
    remove_small_components,
)
from scail2.preprocess.segmentation.motion import (
    AlignedBackground,
    MotionSettings,
    anchored_pieces,
    change_maps,
    character_coloured,
    clean_plate,
    inpaint_outside,
    still_parts,
)
from scail2.preprocess.segmentation.refine import Refinement, refine_identities
from scail2.preprocess.segmentation.sam2 import ObjectPrompt, Sam2Tracker, parse_boxes, parse_points
from scail2.preprocess.segmentation.tracking import TrackingSettings, track_identities
from tests.preprocess.segmentation_clips import crossing_clip, fixed_camera_clip, iou


def motion_masks(frames: np.ndarray, max_characters: int) -> tuple[MotionMasks, torch.Tensor]:
    masks = MotionMasks(as_float_images(torch.from_numpy(frames)), MaskSettings(max_characters=max_characters))
    return masks, torch.stack(list(masks.render(frames)))


# ---------------------------------------------------------------------------------------------------
# Filters against plain references
# ---------------------------------------------------------------------------------------------------


def flood_fill_partition(mask: np.ndarray) -> set[frozenset]:
    """8-connected components by breadth-first search: a set of pixel sets."""
    seen = np.zeros_like(mask)
    parts = set()
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        queue, part = deque([start]), set()
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            part.add((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        parts.add(frozenset(part))
    return parts


@pytest.mark.parametrize("density", [0.3, 0.55])
def test_connected_components_match_flood_fill(density):
    mask = torch.rand(23, 37, generator=torch.Generator().manual_seed(1)) < density
    labels, count = label_components(mask)
    ours = {frozenset(zip(*np.nonzero(labels.numpy() == k))) for k in range(1, count + 1)}
    assert ours == flood_fill_partition(mask.numpy())
    firsts = [np.flatnonzero(labels.numpy().ravel() == k)[0] for k in range(1, count + 1)]
    assert firsts == sorted(firsts)  # numbered in raster order


def test_holes_and_small_pieces():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[2:12, 2:14] = True
    mask[5:8, 6:9] = False  # a 9-pixel hole
    mask[15, 25] = True  # a 1-pixel speck
    assert int(fill_holes(mask, max_pixels=8).sum()) == int(mask.sum())  # hole larger than allowed
    assert int(fill_holes(mask, max_pixels=9).sum()) == int(mask.sum()) + 9
    assert not bool(remove_small_components(mask, 2)[15, 25]) and bool(remove_small_components(mask, 2)[2, 2])


def test_box_mean_matches_average_pooling():
    x = torch.rand(2, 3, 17, 26)
    reference = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    torch.testing.assert_close(box_mean(x, 2), reference, atol=1e-5, rtol=1e-5)


def test_gaussian_blur_per_axis():
    x = torch.rand(2, 9, 14, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(x, (1.5, 1.5)), gaussian_blur(x, 1.5))
    torch.testing.assert_close(gaussian_blur(x, (0.0, 0.0)), x)
    stripe = torch.zeros(9, 14)
    stripe[4] = 1.0
    stripe[4, 7] = 3.0
    along = gaussian_blur(stripe, (0.0, 2.0))  # spreads along the row, never into the next rows
    assert float(along[4].sub(1.0).abs().max()) > 0.1 and float(along[torch.arange(9) != 4].abs().max()) == 0.0
    across = gaussian_blur(stripe, (2.0, 0.0))
    assert float(across[3].max()) > 0.1 and float(across[:, 0].sub(across[:, 1]).abs().max()) < 1e-6


def test_inpainting_fills_a_gap_from_its_sides():
    # sky over ground; the gap at the top right touches the borders and sits far above the ground's edge
    image = torch.zeros(3, 40, 60)
    image[2, :20] = 1.0  # blue sky
    image[1, 20:] = 1.0  # green ground
    known = torch.ones(40, 60, dtype=torch.bool)
    known[:18, 30:] = False
    gap = inpaint_outside(image, known)[:, :18, 30:]
    assert bool((gap[2] > gap[1]).all())  # every gap pixel is filled with more sky than ground
    round_fill = inpaint_outside(image, known, stretch=1.0)[:, :18, 30:]
    assert float((round_fill[2] > round_fill[1]).float().mean()) < 0.7  # round Gaussians reach the ground first


def test_fast_guided_filter_at_equal_size_is_the_guided_filter():
    guide, source = torch.rand(1, 3, 19, 28), torch.rand(1, 2, 19, 28)
    torch.testing.assert_close(
        guided_upsample(guide, source, guide, 3), guided_filter(guide, source, 3), atol=1e-4, rtol=1e-4
    )
    # a constant source stays constant; an edge in the guide keeps a step edge of the source sharp
    step = torch.zeros(1, 1, 19, 28)
    step[..., 14:] = 1.0
    guide = step.expand(1, 3, 19, 28)
    smoothed = guided_filter(guide, step, 4, eps=1e-4)
    assert float((smoothed - step).abs().max()) < 0.02


def test_camera_motion_recovers_a_known_drift():
    frames = fixed_camera_clip(3, "idle", frames=3).frames
    image = as_float_images(torch.from_numpy(frames[:1]))
    truth = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.01, 0.004, 0.03, -0.02], [0.99, -0.004, -0.025, 0.015]])
    clip = torch.cat([camera.warp(image, camera.invert(truth[k : k + 1])) for k in range(3)])  # frame k = T_k(image)
    estimate = camera.estimate_camera_motion(clip)
    # frame k maps onto the middle frame (k = 1) by T_1 after the inverse of T_k
    expected = torch.stack([_compose(truth[1], camera.invert(truth[k : k + 1])[0]) for k in range(3)])
    torch.testing.assert_close(estimate, expected, atol=2e-3, rtol=0)
    assert camera.displacement_pixels(estimate, 128, 192).max() > 2.0


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Parameters of x -> outer(inner(x)) for two similarity transforms (a, b, tx, ty)."""
    a1, b1, x1, y1 = outer
    a2, b2, x2, y2 = inner
    return torch.stack([a1 * a2 - b1 * b2, a1 * b2 + b1 * a2, a1 * x2 - b1 * y2 + x1, b1 * x2 + a1 * y2 + y1])


# ---------------------------------------------------------------------------------------------------
# The weight-free method
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,kind", [(0, "walk"), (3, "run"), (0, "wave"), (3, "idle"), (3, "spin"), (0, "mix")])
def test_weight_free_method_reaches_iou_09_on_fixed_camera_clips(seed, kind):
    clip = fixed_camera_clip(seed, kind)
    masks, ids = motion_masks(clip.frames, max_characters=1)
    assert masks.method == "motion" and masks.count == 1
    assert ids.shape == clip.ids.shape and ids.dtype == torch.uint8
    assert iou(ids.numpy() > 0, clip.ids > 0) >= 0.9


@pytest.mark.parametrize("seed", [0, 3])
def test_identities_stay_stable_through_an_occlusion_crossing(seed):
    clip = crossing_clip(seed)
    masks, ids = motion_masks(clip.frames, max_characters=2)
    assert masks.count == 2
    for truth in (1, 2):  # identity 1 starts on the left: it must keep the first palette colour throughout
        owners = []
        for t in range(ids.shape[0]):
            visible = clip.ids[t] == truth
            if visible.sum() >= 40:
                owners.append(int(np.bincount(ids[t].numpy()[visible], minlength=3)[1:].argmax()) + 1)
        hidden = sum(1 for t in range(ids.shape[0]) if (clip.ids[t] == truth).sum() < 40)
        assert owners == [truth] * (ids.shape[0] - hidden)
    assert iou(ids.numpy() > 0, clip.ids > 0) >= 0.85


def test_clean_plate_drops_a_character_who_stays_most_of_the_clip():
    scene = torch.tensor([0.2, 0.4, 0.9]).view(3, 1, 1).expand(3, 5, 7).contiguous()
    character = torch.tensor([0.8, 0.1, 0.3]).view(3, 1, 1).expand(3, 5, 7)
    frames = torch.stack([character] * 7 + [scene] * 3)  # the character covers the pixels 70% of the time
    frames[0, :, 2, 3] = torch.nan  # a frame that does not see a pixel (moving camera) is left out
    assert torch.allclose(frames.nanmedian(dim=0).values, character)  # the plain median paints it in
    plate = clean_plate(frames, scene, quantile=0.3)
    torch.testing.assert_close(plate, scene)


def test_anchored_pieces_keep_what_movement_stays_joined_to():
    candidates = torch.zeros(12, 20, dtype=torch.bool)
    candidates[2:8, 2:6] = True  # a body
    candidates[2:6, 14:18] = True  # a prop
    moving = torch.zeros(10, 12, 20, dtype=torch.bool)
    moving[:, 1:3, 7:10] = True  # a waving hand beside the body in every frame (within 2 pixels of it)
    moving[:2, 3:5, 11:13] = True  # a passer-by near the prop in 2 frames of 10
    kept = anchored_pieces(candidates, moving, MotionSettings())
    assert bool(kept[2:8, 2:6].all()) and not bool(kept[:, 10:].any())
    assert not anchored_pieces(candidates, torch.zeros_like(moving), MotionSettings()).any()


def test_still_parts_beside_a_wide_movement_are_small_ones_in_moving_colours():
    sky, skin, leaf = (torch.tensor(c).view(3, 1, 1) for c in ([0.55, 0.7, 0.9], [0.35, 0.2, 0.1], [0.2, 0.6, 0.2]))
    median = sky.expand(3, 40, 60).clone()
    median[:, 9:15, 27:33] = skin  # a still head: 36 pixels
    median[:, 9:15, 14:20] = leaf  # a still bush of the same size
    median[:, 3:14, 36:56] = skin  # a large still piece: 220 pixels
    region = torch.zeros(40, 60, dtype=torch.bool)
    region[15:35, 10:50] = True  # a spinning body and its arms: a third of the frame
    moving = torch.zeros(12, 40, 60, dtype=torch.bool)
    moving[:, 15:17, 12:40] = True  # the shoulders and arms move in every frame, beside all three pieces
    arms = skin.expand(3, 4, 4)[None]
    moving_colours = fit_histogram(colour_bins(arms), torch.ones(1, 4, 4))
    kept = still_parts(median, region, moving, MotionSettings(), moving_colours)
    assert bool(kept[9:15, 27:33].all())  # 36 <= 15% of the region's 800 pixels, in the moving colours
    assert not bool(kept[9:15, 14:20].any())  # small, but coloured like nothing that moves
    assert not bool(kept[3:14, 36:56].any())  # 220 > 120: beside a wide movement, that is scenery
    assert not bool(still_parts(median, region, moving, MotionSettings()).any())  # no colours, no still parts
    small_region = region & (torch.arange(60) < 20)  # a region of 200 pixels (8%): no colour or size test
    assert bool(still_parts(median, small_region, moving, MotionSettings())[3:14, 36:56].all())


def test_a_character_standing_still_differs_from_a_clean_background_while_twinkling_does_not():
    scene = torch.full((3, 10, 14), 0.5)
    frames = scene.expand(20, -1, -1, -1).clone()
    frames[4:, :, 2:6, 2:6] = 0.9  # a character stands still from frame 4 on (80% of the clip)
    frames[::2, :, 6:9, 9:12] = 0.2  # a light that twinkles every other frame
    background = AlignedBackground(None, scene, scene.expand(20, -1, -1, -1), torch.ones(20, 10, 14, dtype=torch.bool))
    change, _ = change_maps(frames, background, MotionSettings().background)
    assert bool((change[4:, 3:5, 3:5] > 0.5).all()) and bool((change[:4, 3:5, 3:5] < 0.5).all())
    assert bool((change[:, 7, 10] < 0.5).all())


def test_a_ghost_coloured_like_the_scene_does_not_count_as_covering_it():
    frames = torch.zeros(6, 3, 12, 16)
    frames[:, 2] = 0.9  # a blue scene
    frames[:, :, 3:9, 2:6] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)  # a red character
    probability = torch.zeros(6, 12, 16)
    probability[:, 3:9, 2:6] = 0.95
    probability[:, 3:6, 10:13] = 0.9  # a ghost: masked, but showing the blue scene
    covered = character_coloured(frames, probability)
    assert bool(covered[:, 3:9, 2:6].all()) and not bool(covered[:, :, 8:].any())


def test_a_small_track_is_kept_with_a_note_only_when_nothing_larger_moves():
    frames, height, width = 8, 40, 60  # 2,400 pixels: 1% is 24
    images = torch.full((frames, 3, height, width), 0.5)
    small = torch.zeros(frames, height, width, dtype=torch.bool)
    for t in range(frames):
        small[t, 30:34, 2 + t : 6 + t] = True  # 16 pixels moving right (a waving hand far away)
    alone = track_identities(small, images, TrackingSettings(max_characters=2))
    assert torch.equal(alone.ids > 0, small) and len(alone.tracks) == 1
    assert len(alone.notes) == 1 and alone.notes[0].startswith("kept a small track") and "0.67%" in alone.notes[0]

    beside = small.clone()
    beside[:, 5:15, 30:40] = True  # 100 pixels: a character of 4% of the frame
    tracked = track_identities(beside, images, TrackingSettings(max_characters=2))
    assert len(tracked.tracks) == 1 and not bool(tracked.ids[small].any()) and bool(tracked.ids[:, 5:15, 30:40].all())
    assert len(tracked.notes) == 1 and tracked.notes[0].startswith("dropped a track at x=")


def test_no_movement_is_a_clear_error():
    still = np.repeat(fixed_camera_clip(1, "idle", frames=1).frames, 9, axis=0)
    with pytest.raises(Scail2Error, match="no moving character"):
        motion_masks(still, max_characters=1)


# ---------------------------------------------------------------------------------------------------
# Refinements and reference masks
# ---------------------------------------------------------------------------------------------------


def test_refinements():
    ids = torch.zeros(30, 44, dtype=torch.uint8)
    ids[5:20, 5:15] = 1
    ids[5:20, 16:30] = 2
    ids[10:12, 20:23] = 0  # a 6-pixel hole in identity 2
    ids[27, 40] = 1  # a speck
    assert torch.equal(refine_identities(ids, Refinement()), ids)
    filled = refine_identities(ids, Refinement(fill_holes=6 / ids.numel()))
    assert (filled[10:12, 20:23] == 2).all()
    cleaned = refine_identities(ids, Refinement(min_area=2 / ids.numel()))
    assert cleaned[27, 40] == 0 and cleaned[6, 6] == 1
    grown = refine_identities(ids, Refinement(dilate=2))
    assert (
        grown[5, 15] in (1, 2) and (grown[ids == 2] == 2).all() and (grown[ids == 1] == 1).all()
    )  # only into background
    assert grown[3, 8] == 1 and grown[21, 20] == 2 and grown[22, 20] == 0
    shrunk = refine_identities(ids, Refinement(erode=2))
    assert shrunk[5, 5] == 0 and shrunk[10, 8] == 1 and int((shrunk == 2).sum()) < int((ids == 2).sum())
    jagged = torch.zeros(30, 44, dtype=torch.uint8)
    jagged[8:22, 10:30] = 1
    jagged[8:22:4, 30] = 1  # a sparse comb of single pixels along one edge
    smooth = refine_identities(jagged, Refinement(feather=1.5))
    assert (smooth[8:22, 30] == 0).all() and smooth[15, 20] == 1
    with pytest.raises(ValueError, match="fraction"):
        Refinement(fill_holes=2.0)


def test_reference_identities_left_to_right_and_count_mismatch():
    alpha = np.zeros((40, 60), np.uint8)
    alpha[5:35, 40:55] = 255  # the right character is larger
    alpha[10:30, 5:15] = 255
    rgb = np.zeros((40, 60, 3), np.uint8)
    ids, method = reference_identities(rgb, alpha, 2, "ref.png")
    assert method == "alpha" and ids[20, 10] == 1 and ids[20, 45] == 2
    ids_one, _ = reference_identities(rgb, alpha, 1, "ref.png")
    assert ids_one[20, 10] == 1 and ids_one[20, 45] == 1  # one character: every piece of the alpha
    with pytest.raises(Scail2Error, match="shows 2 character.* driving masks have 3"):
        reference_identities(rgb, alpha, 3, "ref.png")
    clutter = torch.zeros(40, 60, dtype=torch.bool)
    clutter[5:35, 5:25] = True
    clutter[2:4, 50:52] = True  # a speck far smaller than the character
    with pytest.raises(Scail2Error, match="shows 1 character"):
        split_left_to_right(clutter, 2, "ref.png", drop_clutter=True)


def test_still_image_reference_covers_a_procedural_character():
    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig

    generator = ProceduralPairGenerator(SynthConfig(128, 192, 1, ("animate",), seed=0))
    scores = []
    for index in (1, 3, 5):
        sample = generator.generate(index)
        ids, method = reference_identities(sample.reference, None, 1, "ref")
        assert method == "still" and ids.shape == sample.reference_ids.shape
        scores.append(iou(ids.numpy() > 0, sample.reference_ids > 0))
    assert min(scores) >= 0.85, scores


# ---------------------------------------------------------------------------------------------------
# SAM 2 (tiny random model built here; nothing is downloaded)
# ---------------------------------------------------------------------------------------------------


def tiny_sam2_folder(folder) -> str:
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    size = 64
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
        mlp_ratio=2.0,
    )
    features = [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=features,
        fpn_hidden_size=128,
    )
    # memory channels are fixed at 64 upstream and must be smaller than the hidden size
    config = Sam2VideoConfig(
        vision_config=vision,
        image_size=size,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        prompt_encoder_config=dict(hidden_size=128, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16] * 2,
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(0)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():  # say "an object is here" everywhere, so the random masks are not all blanked
        model.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    model.save_pretrained(str(folder))
    return str(folder)


def test_sam2_code_path_with_a_tiny_random_model(tmp_path):
    folder = tiny_sam2_folder(tmp_path / "sam2")
    frames = [np.random.default_rng(t).integers(0, 255, (40, 56, 3), dtype=np.uint8) for t in range(5)]
    tracker = Sam2Tracker(folder)
    prompts = [ObjectPrompt(0, box=(30.0, 5.0, 50.0, 35.0)), ObjectPrompt(2, points=[(8.0, 20.0)])]
    logits = list(tracker.track(frames, prompts))
    assert len(logits) == 5 and all(logit.shape == (2, 40, 56) for logit in logits)
    assert torch.isinf(logits[0][1]).all() and torch.isinf(logits[1][1]).all()  # before its prompt frame
    assert all(torch.isfinite(logit[0]).all() for logit in logits) and torch.isfinite(logits[2][1]).all()
    small = as_float_images(torch.from_numpy(np.stack(frames)))
    settings = MaskSettings(method="sam2", sam2_model=folder, prompts=tuple(prompts))
    masks = Sam2Masks(small, (40, 56), settings)
    # upstream order: first appearance, then left to right; the box prompt (frame 0) is identity 1
    assert [entry["first_frame"] for entry in masks.identities] == [0, 2]
    ids = torch.stack(list(masks.render(frames)))
    assert ids.shape == (5, 40, 56) and int(ids.max()) <= 2 and int(ids[:2].max()) <= 1


def test_sam2_prompt_parsing_and_missing_folder(tmp_path):
    assert parse_boxes("1,2,30,40; 5,6,7,8")[1].box == (5.0, 6.0, 7.0, 8.0)
    assert parse_points("1,2 3,4;5,6")[0].points == [(1.0, 2.0), (3.0, 4.0)]
    with pytest.raises(Scail2Error, match="--boxes"):
        parse_boxes("1,2,3")
    with pytest.raises(Scail2Error, match="no config.json"):
        Sam2Tracker(tmp_path)
