"""`scail2 cache`: encode a synthesised dataset once into latent shards for training."""

from __future__ import annotations

from scail2.commands.arguments import device, int_range
from scail2.commands.cues import add_cue_arguments, changed_cue_flags, cue_settings


def register(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="encode MotionPair shards into a latent cache (resumable)")
    parser.add_argument("--data", required=True, help="dataset folder written by `scail2 synth`")
    parser.add_argument("--model", required=True, help="model folder with vae/ (and text_encoder/, image_encoder/)")
    parser.add_argument("--out", required=True, help="cache folder (an unfinished one is resumed)")
    parser.add_argument("--text-len", type=int_range(1, 4096), default=512, help="token budget of the text encoder")
    parser.add_argument(
        "--driving",
        choices=["frames", "skeleton"],
        default="frames",
        help="condition on the driving frames (SCAIL-2) or on stick figures re-rendered from the "
        "procedural rig (the skeleton-driven baseline; with --cues, DirectAnimator's pose cues are made from "
        "the stick figures, the face and location cues from the frames)",
    )
    parser.add_argument(
        "--driving-scale",
        type=int,
        choices=[1, 2],
        default=None,
        help="resolution divisor of the driving latents and masks: 2 = half (SCAIL-2), 1 = the video's; it must "
        "match the trained transformer's driving_scale (default: the --model folder's transformer's, else 2)",
    )
    parser.add_argument(
        "--driving-signal",
        choices=["frames", "pose_cue"],
        default=None,
        help="what the driving latents encode: the frames (SCAIL-2) or their pose cue (grey, low-pass, on a plain "
        "background); it must match the trained transformer's driving_signal (default: the --model folder's "
        "transformer's, else frames)",
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="storage dtype of the latents")
    parser.add_argument(
        "--device", type=device, default=None, help="torch device (default: cuda if available, else cpu)"
    )
    parser.add_argument("--shard-index", type=int_range(0), help="this machine's index (default: $RANK)")
    parser.add_argument(
        "--num-shards", type=int_range(1), help="number of machines sharing the run (default: $WORLD_SIZE)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--cues",
        action="store_true",
        help="also store DirectAnimator's same-ID and cross-ID driving cues (for `scail2 train --recipe "
        "directanimator`; animation pairs only)",
    )
    add_cue_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"  # before the hub client is imported: components load from the folder only
    from pathlib import Path

    import torch

    from scail2.commands import require_text_dependencies
    from scail2.commands.guards import dataset_guard
    from scail2.data import preference
    from scail2.data.cue_cache import CueCacheEncoder
    from scail2.data.format import read_json
    from scail2.data.latent_cache import CacheEncoder, build_cache
    from scail2.errors import Scail2Error
    from scail2.optional import require

    require("webdataset", purpose="reading the dataset's shards")
    ignored = [] if args.cues else changed_cue_flags(args)
    if ignored:
        raise Scail2Error(f"{', '.join(ignored)} only work with --cues; add --cues or drop them")
    dataset_guard(args, "cache", {"--data": args.data, "--model": args.model})
    require_text_dependencies(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    check_model_components(args.model)
    try:
        encoder = (CueCacheEncoder if args.cues else CacheEncoder).from_model_dir(
            args.model,
            device=device,
            text_len=args.text_len,
            dtype=dtype,
            driving=args.driving,
            driving_scale=args.driving_scale,
            driving_signal=args.driving_signal,
        )
    except Scail2Error:
        raise
    except (OSError, ValueError, RuntimeError) as error:  # a damaged component: unreadable config or weights
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Scail2Error(f"--model {args.model}: a component cannot be loaded ({first}); convert it again") from None
    if args.cues:
        encoder.cue_settings = cue_settings(args)
    meta = Path(args.data) / "meta.json"
    header = read_json(meta, missing_hint="", corrupt_hint="write the dataset again") if meta.is_file() else {}
    is_preference = isinstance(header, dict) and header.get("format") == preference.FORMAT
    if not is_preference:
        check_cache_space(args, encoder)
    build = preference.build_preference_cache if is_preference else build_cache  # winners + losers for DPO
    complete = build(
        args.data, args.out, encoder, shard_index=args.shard_index, num_shards=args.num_shards, progress=not args.quiet
    )
    print(f"{args.out}: {'complete' if complete else 'this machine is done; other shards are still missing'}")
    return 0


# What each component folder needs to load without a network: a missing piece is refused in one line.
COMPONENT_NEEDS = {
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "image_encoder": ("config.json",),
}


def check_model_components(model: str) -> None:
    from pathlib import Path

    from scail2.errors import Scail2Error

    root = Path(model)
    if not root.is_dir():
        raise Scail2Error(f"--model {root}: not a folder; pass a model folder with vae/ (written by `scail2 convert`)")
    for component, files in COMPONENT_NEEDS.items():
        folder = root / component
        for name in files if folder.is_dir() else ():
            if not (folder / name).is_file():
                raise Scail2Error(f"--model {root}: {component}/{name} is missing; convert the model folder again")
    if (root / "text_encoder").is_dir() and not (root / "tokenizer").is_dir():
        raise Scail2Error(
            f"--model {root}: has text_encoder/ but no tokenizer/; copy the tokenizer folder beside it (scail2 never "
            "downloads one)"
        )


def check_cache_space(args, encoder) -> None:
    """Refuse, before the first record, a disk without room for the cache: the first pair's record (its latents
    have the same shapes for every pair), times the pairs this machine caches."""
    from pathlib import Path

    from scail2.data.shards import MotionPairDataset
    from scail2.errors import Scail2Error
    from scail2.outputs import check_free_space

    try:
        dataset = MotionPairDataset(args.data, verify=False)
        first = next(iter(dataset), None)
    except (Scail2Error, OSError, ValueError):
        return  # an unfinished or damaged dataset gets the cache builder's own error
    if first is None:
        return
    record_bytes = sum(t.numel() * t.element_size() for t in encoder.encode(first).values())
    check_free_space("--out", Path(args.out), record_bytes * -(-len(dataset) // (args.num_shards or 1)))
