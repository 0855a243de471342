"""`scail2 masks`: driving and reference masks from raw footage, as a reviewable, reusable folder."""

from __future__ import annotations

import argparse

from scail2.commands.arguments import MAX_SIDE, device, finite_float, int_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "masks",
        help="make driving/reference masks (palette PNGs + meta.json + preview) for review and reuse",
        description="Segment the characters of a driving video (and a reference image) into per-frame palette "
        "masks: lossless PNGs (value k = identity k, shown in the upstream colours), meta.json, the "
        "reference mask and optionally a preview video. Pass the folder to `scail2 animate "
        "--driving-mask DIR` to reuse one driving video's masks with many references.",
    )
    parser.add_argument("--driving", required=True, help="driving video")
    parser.add_argument("--ref", help="reference image (RGBA alpha is used when present)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--method",
        choices=["auto", "sam2", "motion", "provided"],
        default="auto",
        help="auto: provided masks if given, SAM 2 if --sam2-model is given, else motion (no weights)",
    )
    parser.add_argument(
        "--max-characters",
        type=int_range(1, 64),
        default=1,
        help="keep at most K characters, largest first (default 1; raise it for several people)",
    )
    parser.add_argument(
        "--min-track-fraction",
        type=finite_float(0, 1),
        default=0.01,
        help="drop characters never covering this share of the frame (default 0.01, with a warning; "
        "kept when nothing larger moves)",
    )
    parser.add_argument("--preview", action="store_true", help="also write preview.mp4 (masks over the video)")
    parser.add_argument("--driving-mask", help="provided masks: a video or PNG folder, binary or palette colours")
    parser.add_argument("--ref-mask", help="provided reference mask (binary or palette colours)")
    parser.add_argument("--sam2-model", help="local SAM 2 folder (Sam2VideoModel.save_pretrained); never downloaded")
    parser.add_argument("--boxes", help="SAM 2 prompts: 'x0,y0,x1,y1;...' one box per character (video pixels)")
    parser.add_argument("--points", help="SAM 2 prompts: 'x,y x,y;x,y' positive points, characters split by ';'")
    parser.add_argument(
        "--prompt-frame", type=int_range(0), default=0, help="frame the --boxes/--points are on (default 0)"
    )
    parser.add_argument(
        "--device", type=device, default=None, help="torch device for SAM 2 (default: cuda if available)"
    )
    parser.add_argument(
        "--fill-holes",
        type=finite_float(0, 1),
        default=0.0,
        metavar="F",
        help="fill enclosed holes up to this share of the frame (e.g. 0.002)",
    )
    parser.add_argument(
        "--min-area",
        type=finite_float(0, 1),
        default=0.0,
        metavar="F",
        help="drop mask pieces smaller than this share of the frame (e.g. 0.0005)",
    )
    parser.add_argument(
        "--dilate", type=int_range(0, 512), default=0, metavar="PX", help="grow every character by PX pixels"
    )
    parser.add_argument(
        "--erode", type=int_range(0, 512), default=0, metavar="PX", help="shrink every character by PX pixels"
    )
    parser.add_argument(
        "--feather",
        type=finite_float(0, 256),
        default=0.0,
        metavar="SIGMA",
        help="smooth outlines (Gaussian sigma in pixels; masks stay hard-edged palette colours)",
    )
    parser.add_argument(
        "--work-size",
        type=int_range(16, MAX_SIDE),
        default=320,
        help="longer side of the weight-free method's working resolution (default 320)",
    )
    parser.add_argument("--max-frames", type=int_range(1), help="use at most this many driving frames")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing mask folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from scail2.commands.guards import masks_guard
    from scail2.errors import Scail2Error
    from scail2.optional import require
    from scail2.preprocess.segmentation.extract import MaskSettings
    from scail2.preprocess.segmentation.pipeline import MasksRequest, build_mask_folder
    from scail2.preprocess.segmentation.refine import Refinement
    from scail2.preprocess.segmentation.sam2 import merge_prompts, parse_boxes, parse_points

    require("av", purpose="reading the driving video")
    masks_guard(args)
    logging.basicConfig(level=logging.WARNING, format="scail2 masks: warning: %(message)s")
    try:
        refinement = Refinement(args.fill_holes, args.min_area, args.erode, args.dilate, args.feather)
    except ValueError as error:
        raise Scail2Error(f"refinement option: {error}") from None
    prompts = merge_prompts(
        parse_boxes(args.boxes) if args.boxes else [],
        parse_points(args.points) if args.points else [],
        args.prompt_frame,
    )
    if prompts and args.method not in ("sam2", "auto"):
        raise Scail2Error("--boxes/--points prompt SAM 2; use them with --method sam2 and --sam2-model DIR")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = MaskSettings(
        method=args.method,
        max_characters=args.max_characters,
        min_track_fraction=args.min_track_fraction,
        work_size=args.work_size,
        refinement=refinement,
        sam2_model=args.sam2_model,
        prompts=tuple(prompts),
        device=device,
    )
    request = MasksRequest(
        driving=args.driving,
        out=args.out,
        ref=args.ref,
        driving_mask=args.driving_mask,
        ref_mask=args.ref_mask,
        settings=settings,
        preview=args.preview,
        max_frames=args.max_frames,
        overwrite=args.overwrite,
    )
    meta = build_mask_folder(request)
    names = ", ".join(entry["name"] for entry in meta["identities"])
    extra = f"; reference mask ({meta['reference']['method']})" if meta["reference"] else ""
    extra += "; preview.mp4" if meta["preview"] else ""
    print(
        f"wrote {args.out}: {meta['frames']} frames {meta['width']}x{meta['height']}, "
        f"{len(meta['identities'])} character(s) ({names}) by {meta['method']}{extra}"
    )
    return 0
