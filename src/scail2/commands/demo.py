"""`scail2 demo`: the bundled model animates held-out procedural characters (the main job without a GPU)."""

from __future__ import annotations

from scail2.commands.arguments import MAX_STEPS, int_range, seed


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="animate held-out characters with the bundled model and score them")
    parser.add_argument("--out", default="demo_output", help="folder for the MP4s, previews and metrics.json")
    parser.add_argument("--model", help="model folder (default: the bundled demo model)")
    parser.add_argument(
        "--steps", type=int_range(1, MAX_STEPS), help="denoising steps (default: the bundled model's setting)"
    )
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument(
        "--split",
        choices=["test", "val", "closeup-test", "closeup-val"],
        help="held-out split the pairs come from (default: the one the bundled model is scored on; closeup-* for "
        "a model trained on the close-up world)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from scail2.commands import require_text_dependencies
    from scail2.commands.guards import demo_guard
    from scail2.demo import run_demo
    from scail2.optional import require

    require("av", purpose="writing the demo videos")
    require_text_dependencies(args.model)
    demo_guard(args)

    run_demo(out=args.out, model=args.model, steps=args.steps, seed=args.seed, split=args.split)
    return 0
