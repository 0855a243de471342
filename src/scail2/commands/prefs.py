"""`scail2 prefs`: bias-aware preference pairs for the DPO stage (winner: one round of synthesis, loser: two)."""

from __future__ import annotations

from scail2.commands.arguments import MAX_STEPS, device, int_range, seed


def register(subparsers) -> None:
    parser = subparsers.add_parser("prefs", help="build bias-aware DPO preference pairs from a MotionPair dataset")
    parser.add_argument("--data", required=True, help="dataset folder written by `scail2 synth`")
    parser.add_argument("--out", required=True, help="preference dataset folder (an unfinished one is resumed)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder: its SCAIL2Pipeline re-synthesises (the real construction)")
    source.add_argument(
        "--procedural",
        action="store_true",
        help="weight-free drift model instead of a generator (tests and bootstrapping only)",
    )
    parser.add_argument("--num", type=int_range(1), help="use the first N pairs (default: all)")
    parser.add_argument(
        "--steps", type=int_range(1, MAX_STEPS), default=20, help="sampler steps per generation (with --model)"
    )
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", type=device, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--shard-index", type=int_range(0), help="this machine's index (default: $RANK)")
    parser.add_argument(
        "--num-shards", type=int_range(1), help="number of machines sharing the run (default: $WORLD_SIZE)"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=run)


def run(args) -> int:
    from scail2.commands import require_text_dependencies
    from scail2.commands.guards import check_model_folder, dataset_guard
    from scail2.data.preference import PipelineAnimator, ProceduralAnimator, write_preference_dataset
    from scail2.optional import require

    require("webdataset", purpose="reading and writing dataset shards")
    dataset_guard(args, "prefs", {"--data": args.data, "--model": args.model})
    require_text_dependencies(args.model)
    check_model_folder("--model", args.model)
    check_pair_count(args.data, args.num)

    if args.procedural:
        animator = ProceduralAnimator(seed=args.seed)
    else:
        from scail2.animate import load_pipeline, model_fingerprint, resolve_device
        from scail2.pipelines.pipeline_scail2 import SamplingSettings

        pipeline = load_pipeline(args.model, resolve_device(args.device))
        settings = SamplingSettings(sampler="unipc", steps=args.steps, guidance_scale=1.0)
        animator = PipelineAnimator(pipeline, settings, seed=args.seed, name=model_fingerprint(args.model))
    write_preference_dataset(
        args.data,
        args.out,
        animator,
        num_pairs=args.num,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}; encode it with `scail2 cache --data {args.out} ...`")
    return 0


def check_pair_count(data, num: int | None) -> None:
    """--num cannot exceed the source dataset's pairs (each preference pair is made from one of them)."""
    from scail2.data.shards import MotionPairDataset
    from scail2.errors import Scail2Error

    available = len(MotionPairDataset(data, verify=False))
    if num is not None and num > available:
        raise Scail2Error(f"--num {num} is more than the {available} pairs of --data {data}; give at most {available}")
