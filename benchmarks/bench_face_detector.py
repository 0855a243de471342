"""DirectAnimator's face-cue head boxes on a real driving video: OpenCV's face detector against the box from the
top of the mask.

    python -m benchmarks.bench_face_detector --driving VIDEO --masks MASK_FOLDER [--max-frames N]

Needs the face extra (`pip install 'scail2[face]'`) and a mask folder of the video (`scail2 masks`). Per
character the table prints:

    found            frames where the detector's face lies on the character's mask / frames it is present
    extra faces      detections per frame beyond the one kept (on the character or the background)
    side ratio       detected box side / mask-derived box side (median over frames with a detection)
    centre offset    distance between the two boxes' centres / mask-derived box side (median)
    IoU              of the two boxes, unsmoothed (median)
    s/frame          detector time per frame (the frame scaled to DETECT_SIDE on its longer side)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scail2.preprocess.cue_settings import CueSettings
from scail2.preprocess.cues import character_identities, head_box_from_mask
from scail2.preprocess.face_detect import DETECT_SIDE, detect_faces, nearest, opencv_cascade, owner
from scail2.preprocess.mask_folder import open_mask_folder
from scail2.preprocess.video_io import read_video


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def compare(frames: np.ndarray, ids: np.ndarray, settings: CueSettings) -> tuple[dict, float]:
    """Per identity: the detection statistics of the table; and the detector's seconds per frame."""
    cascade, identities = opencv_cascade(), character_identities(ids)
    stats = {
        identity: {"present": 0, "found": 0, "extra": 0, "side": [], "offset": [], "iou": []} for identity in identities
    }
    start = time.perf_counter()
    for frame, frame_ids in zip(frames, ids, strict=True):
        faces = detect_faces(cascade, frame)
        owners = [owner(frame_ids, box, identities) for box in faces]
        unowned = sum(o is None for o in owners)  # detections on no character (a hand, a shirt, the background)
        for k, identity in enumerate(identities):
            mask_box = head_box_from_mask(frame_ids == identity, settings.head_fraction)
            if np.isnan(mask_box[0]):
                continue
            entry = stats[identity]
            entry["present"] += 1
            mine = [box for box, o in zip(faces, owners, strict=True) if o == k]
            entry["extra"] += max(0, len(mine) - 1) + unowned  # other characters' faces are theirs, not extras
            if not mine:
                continue
            box = nearest(mine, mask_box)
            side = mask_box[2] - mask_box[0]
            centre = lambda b: np.array([b[0] + b[2], b[1] + b[3]]) / 2  # noqa: E731
            entry["found"] += 1
            entry["side"].append(max(box[2] - box[0], box[3] - box[1]) / side)
            entry["offset"].append(float(np.linalg.norm(centre(box) - centre(mask_box))) / side)
            entry["iou"].append(iou(box, mask_box))
    return stats, (time.perf_counter() - start) / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driving", required=True)
    parser.add_argument("--masks", required=True, help="the video's mask folder (`scail2 masks`)")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--head-fraction", type=float, default=CueSettings().head_fraction)
    args = parser.parse_args()
    video = read_video(args.driving, max_frames=args.max_frames)
    frames = video.frames.numpy()
    ids = np.stack(list(open_mask_folder(args.masks).iter_ids(frames.shape[0])))
    stats, per_frame = compare(frames, ids, CueSettings(head_fraction=args.head_fraction))
    height, width = frames.shape[1:3]
    print(
        f"{args.driving}: {len(frames)} frames {width}x{height}, detector at {DETECT_SIDE} px, {per_frame:.2f} s/frame"
    )
    print("| character | found | extra faces / frame | side ratio | centre offset | IoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for identity, entry in stats.items():
        median = lambda values: f"{np.median(values):.2f}" if values else "-"  # noqa: E731
        print(
            f"| {identity} | {entry['found']}/{entry['present']} | {entry['extra'] / max(1, entry['present']):.2f} "
            f"| {median(entry['side'])} | {median(entry['offset'])} | {median(entry['iou'])} |"
        )


if __name__ == "__main__":
    main()
