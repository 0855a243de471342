"""`scail2 cues`: DirectAnimator's Driving Cue Triplet of a driving video, as a reviewable, lossless folder."""

from __future__ import annotations

import argparse

from scail2.commands.arguments import finite_float, int_range
from scail2.preprocess.cue_settings import COLORS, FACE_DETECTORS, FILTERS, CueSettings

DEFAULTS = CueSettings()
FACE_DETECTOR_PURPOSE = "the --face-detector opencv face detector"


def add_face_detector_argument(parser: argparse.ArgumentParser) -> None:
    """`--face-detector` (shared with `scail2 animate` for DirectAnimator models)."""
    parser.add_argument(
        "--face-detector",
        choices=FACE_DETECTORS,
        default="mask",
        help="head boxes of the face cue: mask (the top of each character's mask, default) or opencv (OpenCV's "
        "bundled face detector, pip install 'scail2[face]'; the mask's box where it finds no face)",
    )


def require_face_detector(args: argparse.Namespace) -> None:
    """The one-line missing-extra error before any work, when the detector needs OpenCV."""
    from scail2.optional import require

    if args.face_detector == "opencv":
        require("cv2", purpose=FACE_DETECTOR_PURPOSE)


def add_cue_arguments(parser: argparse.ArgumentParser) -> None:
    """The cue settings' flags (shared with `scail2 animate` for DirectAnimator models)."""
    group = parser.add_argument_group("driving cues (DirectAnimator)")
    group.add_argument("--cue-color", choices=COLORS, default=DEFAULTS.color, help="pose cue colour (default gray)")
    group.add_argument("--cue-filter", choices=FILTERS, default=DEFAULTS.filter, help="pose cue low-pass filter")
    group.add_argument(
        "--cue-cutoff",
        type=finite_float(0, 1, low_open=True),
        default=DEFAULTS.cutoff,
        help=f"low-pass cutoff as a fraction of the Nyquist frequency (default {DEFAULTS.cutoff})",
    )
    group.add_argument("--cue-order", type=int_range(1, 16), default=DEFAULTS.order, help="Butterworth order")
    group.add_argument(
        "--face-scale", type=finite_float(1, 16), default=DEFAULTS.face_scale, help="face crop side / head box side"
    )
    group.add_argument(
        "--head-fraction",
        type=finite_float(0, 1, low_open=True),
        default=DEFAULTS.head_fraction,
        help="head box side / mask height",
    )
    group.add_argument(
        "--box-smoothing",
        type=int_range(1, 10_000),
        default=DEFAULTS.box_smoothing,
        help="frames to average boxes over",
    )
    group.add_argument(
        "--cue-grid", type=int_range(1, 4096), default=DEFAULTS.grid, help="location-cue cell size in pixels"
    )


CUE_FLAGS = {
    "cue_color": "--cue-color",
    "cue_filter": "--cue-filter",
    "cue_cutoff": "--cue-cutoff",
    "cue_order": "--cue-order",
    "face_scale": "--face-scale",
    "head_fraction": "--head-fraction",
    "box_smoothing": "--box-smoothing",
    "cue_grid": "--cue-grid",
}


def changed_cue_flags(args: argparse.Namespace) -> list[str]:
    """The cue flags given other values than their defaults (for commands where they only apply with --cues)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_cue_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return [flag for dest, flag in CUE_FLAGS.items() if getattr(args, dest) != defaults[dest]]


def cue_settings(args: argparse.Namespace) -> CueSettings:
    from scail2.errors import Scail2Error

    try:
        return CueSettings(
            color=args.cue_color,
            filter=args.cue_filter,
            cutoff=args.cue_cutoff,
            order=args.cue_order,
            face_scale=args.face_scale,
            head_fraction=args.head_fraction,
            box_smoothing=args.box_smoothing,
            grid=args.cue_grid,
        )
    except ValueError as error:
        raise Scail2Error(f"cue option: {error}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cues",
        help="make DirectAnimator's driving cues (pose, face, location) as PNG folders + meta.json",
        description="Turn a driving video and its masks (a `scail2 masks` folder) into DirectAnimator's Driving "
        "Cue Triplet: the low-pass filtered foreground (pose cue), an enlarged head crop per character (face "
        "cue) and grid-softened body and face masks (location cue), each as lossless PNGs for review.",
    )
    parser.add_argument("--driving", required=True, help="driving video")
    parser.add_argument("--masks", required=True, help="the driving video's mask folder (from `scail2 masks`)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--max-frames", type=int_range(1), help="use at most this many driving frames")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cue folder")
    add_face_detector_argument(parser)
    add_cue_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from scail2.commands.guards import cues_guard
    from scail2.errors import Scail2Error
    from scail2.optional import require
    from scail2.preprocess.cue_folder import write_cue_folder
    from scail2.preprocess.cues import character_identities
    from scail2.preprocess.face_detect import extract_cues_with
    from scail2.preprocess.mask_folder import open_mask_folder
    from scail2.preprocess.video_io import read_video

    require("av", purpose="reading the driving video")
    require_face_detector(args)
    settings = cue_settings(args)
    cues_guard(args)
    masks = open_mask_folder(args.masks)
    video = read_video(args.driving, max_frames=args.max_frames)
    frames = video.frames.numpy()
    ids = np.stack(list(masks.iter_ids(frames.shape[0])))
    if ids.shape != frames.shape[:3]:
        raise Scail2Error(
            f"{args.masks}: masks are {ids.shape[0]} frames of {ids.shape[2]}x{ids.shape[1]}, the driving video "
            f"{frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]}; make the masks from this video"
        )
    cues, boxes = extract_cues_with(frames, ids, settings, args.face_detector)
    meta = {
        "fps": str(video.fps),
        "identities": character_identities(ids),
        "head_boxes": "top of the mask" if args.face_detector == "mask" else "face detector, else top of the mask",
        "face_detector": boxes,
        "settings": settings.to_json(),
        "sources": {"driving": str(args.driving), "masks": str(args.masks)},
    }
    write_cue_folder(args.out, cues, meta, overwrite=args.overwrite)
    found = ""
    if "detected_frames" in boxes:
        detected, total = sum(boxes["detected_frames"]), sum(boxes["detected_frames"] + boxes["mask_box_frames"])
        found = f", face found in {detected} of {total} character-frames"
    print(
        f"wrote {args.out}: {cues.num_frames} frames {frames.shape[2]}x{frames.shape[1]}, "
        f"{len(meta['identities'])} character(s){found}"
    )
    return 0
