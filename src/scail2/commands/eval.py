"""`scail2 eval`: the demo benchmark (copy-reference, skeleton-driven and end-to-end models on a held-out split)."""

from __future__ import annotations

from scail2.commands.arguments import MAX_STEPS, finite_float, int_range, seed


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score models against the ground truth of a held-out split")
    parser.add_argument("--model", help="SCAIL-2 model folder (default: the bundled demo model)")
    parser.add_argument(
        "--skeleton-model",
        help="skeleton-driven baseline model folder (default: the bundled one; 'none' leaves the row out)",
    )
    parser.add_argument(
        "--directanimator-model",
        help="DirectAnimator model folder to score beside SCAIL-2, on the animation pairs only (default: none)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "closeup-test", "closeup-val", "outside"],
        help="held-out split (closeup-*: the same seeds in the close-up world; outside: new shapes on plain "
        "backdrops along curved paths, no skeleton baseline)",
    )
    parser.add_argument("--pairs", type=int_range(1), help="pairs of the split to use (default: all 64; outside: 16)")
    parser.add_argument(
        "--steps", type=int_range(1, MAX_STEPS), help="denoising steps (default: the bundled model's setting)"
    )
    parser.add_argument(
        "--shift",
        type=finite_float(0, 100, low_open=True),
        help="sampling shift (default: the bundled model's setting)",
    )
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--json", help="write every score and the summary to this JSON file")
    parser.add_argument("--report-dir", help="write table.md and plot.png here")
    parser.add_argument("--readme", help="replace the benchmark section of this README with the new table")
    parser.add_argument(
        "--no-dependence",
        action="store_true",
        help="skip the driver-dependence check (loss rise on character cells with the driving stream zeroed)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from scail2.commands import require_text_dependencies
    from scail2.commands.guards import eval_guard
    from scail2.eval.report import run_benchmark

    require_text_dependencies(args.model)
    eval_guard(args)
    run_benchmark(args)
    return 0
