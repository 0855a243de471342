"""Quality and speed of the mask methods on procedural clips with exact masks (no weights needed).

    .venv/bin/python benchmarks/bench_masks.py [--seeds 6] [--references 30] [--frames 33]

Prints three tables:
1. the weight-free method's IoU against the ground-truth masks of fixed-camera clips (128x192, camera
   zoom 1.3), per motion kind over `--seeds` clips: mean, median, worst and the share of clips >= 0.9;
2. identity tracking through occlusion crossings (two runners, one hides the other): the share of clips
   whose identities keep their colour in every frame, and the mean IoU;
3. the still-image method on procedural reference images (`ProceduralPairGenerator` references).
Then a speed table: seconds for the stages at working resolution and per frame at full HD, and `scail2
masks` end to end on a 1920x1080 video (`--video PATH`; by default a procedural walk rendered at 1080p,
`--hd-frames` long) in frames per second, with the CPU seconds and the machine's load average beside it
(on a shared machine the wall clock alone says little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' clip helpers

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig  # noqa: E402
from scail2.preprocess.segmentation.extract import MaskSettings, MotionMasks, reference_identities  # noqa: E402
from scail2.preprocess.segmentation.filters import as_float_images, label_components, single_threaded  # noqa: E402
from scail2.preprocess.segmentation.pipeline import MasksRequest, build_mask_folder  # noqa: E402
from scail2.preprocess.segmentation.refine import upsample_identities  # noqa: E402
from scail2.preprocess.video_io import probe_video, write_mp4  # noqa: E402
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


def _hd_clip(folder: Path, frames: int) -> Path:
    """A procedural walk rendered at 1920x1080 and encoded as H.264 (what a phone or camera gives)."""
    clip = fixed_camera_clip(0, "walk", height=1080, width=1920, frames=frames)
    return write_mp4(folder / "walk_1080p.mp4", clip.frames, 30)


def table_end_to_end(video: str | None, frames: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(video) if video else _hd_clip(Path(folder), frames)
        info = probe_video(path)
        load = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        meta = build_mask_folder(MasksRequest(driving=path, out=Path(folder) / "masks"))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = meta["frames"]
    print(f"\n5. `scail2 masks` end to end (decode, analysis, render, PNG frames), {os.cpu_count()} cores")
    print(f"{'video':34} {'frames':>6} {'wall s':>7} {'frames/s':>8} {'CPU s':>6} {'load':>5}")
    name = f"{path.name} {info.width}x{info.height}"
    print(f"{name[:34]:34} {count:6d} {wall:7.1f} {count / wall:8.2f} {cpu:6.1f} {load:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6, help="clips per motion kind and crossings")
    parser.add_argument("--references", type=int, default=30, help="procedural reference images")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--video", help="a 1080p driving video for the end-to-end row (default: procedural)")
    parser.add_argument("--hd-frames", type=int, default=60, help="length of the procedural 1080p clip")
    parser.add_argument("--only-end-to-end", action="store_true", help="skip the quality tables")
    args = parser.parse_args()
    if not args.only_end_to_end:
        table_fixed_camera(args.seeds, args.frames)
        table_crossings(args.seeds * 2, args.frames)
        table_references(args.references)
        table_speed(args.frames)
    table_end_to_end(args.video, args.hd_frames)


if __name__ == "__main__":
    main()
