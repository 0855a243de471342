"""`scail2 synth`: write MotionPair training pairs from the procedural world as WebDataset shards."""

from __future__ import annotations

import argparse

from scail2.commands.arguments import four_n_plus_one, int_range, seed


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="synthesise paired training data (procedural characters) as WebDataset shards",
        description="Render pairs of videos in which the same motion is performed by different characters "
        "(animation, replacement, multi-character) and write them as resumable WebDataset shards.",
    )
    parser.add_argument("--out", help="dataset directory (created; an unfinished run there is resumed)")
    parser.add_argument("--num", type=int_range(1), default=1000, help="number of pairs (default 1000)")
    parser.add_argument("--size", default="128", help="frame size: S for SxS, or HxW (default 128)")
    parser.add_argument(
        "--frames", type=four_n_plus_one(1, 1025), default=17, help="frames per video (4n+1; default 17)"
    )
    parser.add_argument("--tasks", default="animate,replace,multi", help="comma-separated tasks to mix")
    parser.add_argument("--seed", type=seed, default=0, help="dataset seed; pair i depends only on (seed, i)")
    parser.add_argument(
        "--world", default="wide", choices=["wide", "closeup"], help="procedural world preset (default wide)"
    )
    parser.add_argument("--workers", type=int_range(1, 256), default=1, help="rendering processes (default 1)")
    parser.add_argument("--shard-size", type=int_range(1), default=256, help="pairs per tar shard (default 256)")
    parser.add_argument("--shard-index", type=int_range(0), help="this machine's index (default: $RANK)")
    parser.add_argument(
        "--num-shards", type=int_range(1), help="number of machines sharing the run (default: $WORLD_SIZE)"
    )
    parser.add_argument("--preview", help="write a contact sheet PNG (reference | driving | target) of the first pairs")
    parser.add_argument(
        "--preview-pairs", type=int_range(1, 256), default=8, help="pairs on the contact sheet (default 8)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


SIZE_MULTIPLE = 32  # what a dataset's frame sides must divide into for the latent cache and the transformer


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

    from scail2.commands.guards import dataset_guard
    from scail2.data.format import atomic_path
    from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, contact_sheet
    from scail2.data.shards import resolve_sharding, write_dataset
    from scail2.data.world import WORLD_PRESETS
    from scail2.errors import Scail2Error
    from scail2.optional import require
    from scail2.outputs import OutputGuard

    if not args.out and not args.preview:
        raise Scail2Error("nothing to do: give --out DIR to write shards and/or --preview OUT.png")
    height, width = parse_size(args.size)
    if args.out:
        require("webdataset", purpose="writing the dataset's shards")
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise Scail2Error(
                f"--size {args.size}: each side must be a multiple of {SIZE_MULTIPLE} for `scail2 cache` and training "
                "(the driving stream runs at half size through the 8x VAE and 2x2 patches), e.g. 128 or 96x160"
            )
        dataset_guard(args, "synth", {})
    if args.preview:
        OutputGuard("synth", {"--out": args.out}).file("--preview", args.preview)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    config = SynthConfig(height, width, args.frames, tasks, args.seed, world=WORLD_PRESETS[args.world])
    generator = ProceduralPairGenerator(config)
    if args.out:
        shard_index, num_shards = resolve_sharding(args.shard_index, args.num_shards)
        check_synth_space(args.out, generator, -(-args.num // num_shards))
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
        with atomic_path(args.preview) as partial:  # a per-process temporary name: two runs never collide
            Image.fromarray(contact_sheet(samples)).save(partial, format="PNG")
        print(f"wrote {args.preview}")
    return 0


SPACE_MARGIN = 1.25  # procedural pairs compress alike; a quarter more covers the spread between them


def check_synth_space(out, generator, num_pairs: int) -> None:
    """Refuse, before the first shard, a disk without room for the pairs: one pair encoded as the shards store
    it, times the pairs this machine writes."""
    from pathlib import Path

    from scail2.data.shards import encode_sample
    from scail2.outputs import check_free_space

    pair_bytes = sum(len(data) for data in encode_sample(generator.generate(0)).values())
    check_free_space("--out", Path(out), int(pair_bytes * num_pairs * SPACE_MARGIN))
