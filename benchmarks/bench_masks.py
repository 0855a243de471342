"""Quality and speed of the mask methods on procedural clips with exact masks (no weights needed).

    .venv/bin/python benchmarks/bench_masks.py [--seeds 6] [--references 30] [--frames 33]

Prints three tables:
1. the weight-free method's IoU against the ground-truth masks of fixed-camera clips (128x192, camera
   zoom 1.3), per motion kind over `--seeds` clips: mean, median, worst and the share of clips >= 0.9;
2. identity tracking through occlusion crossings (two runners, one hides the other): the share of clips
   whose identities keep their colour in every frame, and the mean IoU;
3. the still-image method on procedural reference images (`ProceduralPairGenerator` references).
Then a speed table: seconds for the stages at working resolution and per frame at full HD.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' clip helpers

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig  # noqa: E402
from scail2.preprocess.segmentation.extract import MaskSettings, MotionMasks, reference_identities  # noqa: E402
from scail2.preprocess.segmentation.filters import as_float_images, label_components, single_threaded  # noqa: E402
from scail2.preprocess.segmentation.refine import upsample_identities  # noqa: E402
from tests.preprocess.segmentation_clips import crossing_clip, fixed_camera_clip, iou  # noqa: E402

KINDS = ("walk", "run", "jump", "dance", "spin", "wave", "idle", "mix")


def _masks(frames: np.ndarray, max_characters: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    try:
        masks = MotionMasks(as_float_images(torch.from_numpy(frames)), MaskSettings(max_characters=max_characters))
        ids = torch.stack(list(masks.render(frames))).numpy()
    except Exception:  # noqa: BLE001 - a failure (e.g. no movement found) counts as an empty mask
        ids = np.zeros(frames.shape[:3], np.uint8)
    return ids, time.perf_counter() - start


def table_fixed_camera(seeds: int, frames: int) -> None:
    print(f"\n1. weight-free method, fixed camera, 128x192, {frames} frames, {seeds} clips per kind")
    print(f"{'motion':8} {'mean IoU':>9} {'median':>7} {'worst':>6} {'>=0.9':>6} {'s/clip':>7}")
    for kind in KINDS:
        scores, seconds = [], []
        for seed in range(seeds):
            clip = fixed_camera_clip(seed, kind, frames=frames)
            ids, elapsed = _masks(clip.frames, 1)
            scores.append(iou(ids > 0, clip.ids > 0))
            seconds.append(elapsed)
        share = sum(s >= 0.9 for s in scores) / len(scores)
        print(
            f"{kind:8} {statistics.mean(scores):9.3f} {statistics.median(scores):7.3f} {min(scores):6.3f} "
            f"{share:6.0%} {statistics.mean(seconds):7.2f}"
        )


def _stable(ids: np.ndarray, truth: np.ndarray) -> bool:
    for identity in (1, 2):
        owners = {
            int(np.bincount(ids[t][truth[t] == identity], minlength=3)[1:].argmax()) + 1
            for t in range(len(ids))
            if (truth[t] == identity).sum() >= 40
        }
        if owners != {identity}:
            return False
    return True


def table_crossings(seeds: int, frames: int) -> None:
    stable, scores = 0, []
    for seed in range(seeds):
        clip = crossing_clip(seed, frames=frames)
        ids, _ = _masks(clip.frames, 2)
        stable += _stable(ids, clip.ids)
        scores.append(iou(ids > 0, clip.ids > 0))
    print(
        f"\n2. occlusion crossings (two runners), {seeds} clips: identities stable in {stable}/{seeds} "
        f"({stable / seeds:.0%}); foreground IoU mean {statistics.mean(scores):.3f}, worst {min(scores):.3f}"
    )


def table_references(count: int) -> None:
    generator = ProceduralPairGenerator(SynthConfig(128, 192, 1, ("animate",), seed=0))
    scores, seconds = [], []
    for index in range(count):
        sample = generator.generate(index)
        start = time.perf_counter()
        try:
            ids, _ = reference_identities(sample.reference, None, 1, "reference")
            scores.append(iou(ids.numpy() > 0, sample.reference_ids > 0))
        except Exception:  # noqa: BLE001 - nothing found counts as IoU 0
            scores.append(0.0)
        seconds.append(time.perf_counter() - start)
    print(
        f"\n3. still-image references (procedural, 128x192), {count} images: IoU mean {statistics.mean(scores):.3f}, "
        f"median {statistics.median(scores):.3f}, >=0.8 in {sum(s >= 0.8 for s in scores) / count:.0%}, "
        f"worst {min(scores):.3f}; {statistics.mean(seconds):.2f} s per image"
    )


def table_speed(frames: int) -> None:
    clip = fixed_camera_clip(0, "walk", frames=frames)
    small = as_float_images(torch.from_numpy(clip.frames))
    start = time.perf_counter()
    masks = MotionMasks(small, MaskSettings(max_characters=1))
    analyse = time.perf_counter() - start
    large = torch.rand(3, 1080, 1920)
    start = time.perf_counter()
    for t in range(5):
        upsample_identities(masks.ids[t], small[t], large, masks.count)
    render = (time.perf_counter() - start) / 5
    mask = torch.rand(180, 320) > 0.5
    start = time.perf_counter()
    with single_threaded():  # as the methods run it
        for _ in range(5):
            label_components(mask)
    labelling = (time.perf_counter() - start) / 5
    print(f"\n4. speed (analysis single-threaded by design; full-HD render on {torch.get_num_threads()} torch threads)")
    print(f"{'stage':48} {'seconds':>8}")
    print(f"{f'weight-free analysis, {frames} frames at 128x192':48} {analyse:8.2f}")
    print(f"{'guided render of one mask at 1920x1080':48} {render:8.3f}")
    print(f"{'connected components, 320x180 random (worst case)':48} {labelling:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6, help="clips per motion kind and crossings")
    parser.add_argument("--references", type=int, default=30, help="procedural reference images")
    parser.add_argument("--frames", type=int, default=33)
    args = parser.parse_args()
    table_fixed_camera(args.seeds, args.frames)
    table_crossings(args.seeds * 2, args.frames)
    table_references(args.references)
    table_speed(args.frames)


if __name__ == "__main__":
    main()
