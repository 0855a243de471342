"""`scail2 synth`: write MotionPair training pairs from the procedural world as WebDataset shards."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="synthesise paired training data (procedural characters) as WebDataset shards",
        description="Render pairs of videos in which the same motion is performed by different characters "
        "(animation, replacement, multi-character) and write them as resumable WebDataset shards.",
    )
    parser.add_argument("--out", help="dataset directory (created; an unfinished run there is resumed)")
    parser.add_argument("--num", type=int, default=1000, help="number of pairs (default 1000)")
    parser.add_argument("--size", default="128", help="frame size: S for SxS, or HxW (default 128)")
    parser.add_argument("--frames", type=int, default=17, help="frames per video (default 17, i.e. 4n+1)")
    parser.add_argument("--tasks", default="animate,replace,multi", help="comma-separated tasks to mix")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; pair i depends only on (seed, i)")
    parser.add_argument(
        "--world", default="wide", choices=["wide", "closeup"], help="procedural world preset (default wide)"
    )
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    parser.add_argument("--shard-size", type=int, default=256, help="pairs per tar shard (default 256)")
    parser.add_argument("--shard-index", type=int, help="this machine's index (default: $RANK)")
    parser.add_argument("--num-shards", type=int, help="number of machines sharing the run (default: $WORLD_SIZE)")
    parser.add_argument("--preview", help="write a contact sheet PNG (reference | driving | target) of the first pairs")
    parser.add_argument("--preview-pairs", type=int, default=8, help="pairs on the contact sheet (default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '96x160' -> (96, 160) as (height, width)."""
    from scail2.errors import Scail2Error

    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise Scail2Error(f"--size {text!r} is not S or HxW (for example 128 or 96x160)")
    return (values[0], values[-1])


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, contact_sheet
    from scail2.data.shards import resolve_sharding, write_dataset
    from scail2.data.world import WORLD_PRESETS
    from scail2.errors import Scail2Error
    from scail2.optional import require

    if not args.out and not args.preview:
        raise Scail2Error("nothing to do: give --out DIR to write shards and/or --preview OUT.png")
    if args.out:
        require("webdataset", purpose="writing the dataset's shards")
    height, width = parse_size(args.size)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    config = SynthConfig(height, width, args.frames, tasks, args.seed, world=WORLD_PRESETS[args.world])
    generator = ProceduralPairGenerator(config)
    if args.out:
        shard_index, num_shards = resolve_sharding(args.shard_index, args.num_shards)
        report = write_dataset(
            generator,
            args.out,
            args.num,
            shard_size=args.shard_size,
            workers=args.workers,
            shard_index=shard_index,
            num_shards=num_shards,
            progress=not args.quiet,
        )
        state = "complete" if report.complete else "this share done; manifest waits for the other shares"
        print(
            f"{args.out}: wrote {report.written_shards} shards ({report.pairs_written} pairs), "
            f"{report.skipped_shards} already present; {state}"
        )
    if args.preview:
        samples = [generator.generate(i) for i in range(min(args.preview_pairs, args.num))]
        partial = f"{args.preview}.partial.png"
        Image.fromarray(contact_sheet(samples)).save(partial)
        import os

        os.replace(partial, args.preview)
        print(f"wrote {args.preview}")
    return 0
