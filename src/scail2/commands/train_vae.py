"""`scail2 train-vae`: train a small Wan-layout video VAE on `scail2 synth` data and export it."""

from __future__ import annotations

from scail2.commands.arguments import int_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-vae",
        help="train a small AutoencoderKLWan on synthesised pairs (the demo model's VAE)",
        description="Train a diffusers AutoencoderKLWan with Wan's latent layout (z 16, 4x time, 8x space) on the "
        "videos of a `scail2 synth` dataset; at train.max_steps export RUN/export/vae with latent "
        "statistics in its config.",
    )
    parser.add_argument("--data", required=True, help="dataset folder written by `scail2 synth`")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, metrics, previews, export")
    parser.add_argument("--config", help="config YAML (see configs/demo_vae.yaml)")
    parser.add_argument("--max-steps", type=int_range(0), help="stop at this step (the schedule keeps train.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
    parser.add_argument("--export-only", action="store_true", help="export the newest checkpoint and stop")
    parser.add_argument(
        "--overwrite", action="store_true", help="start again in a run folder an earlier `scail2 train-vae` wrote"
    )
    parser.add_argument(
        "--eval",
        metavar="DIR",
        help="after export, report reconstruction PSNR on this held-out "
        "`scail2 synth` folder (written to RUN/export/eval.json)",
    )
    parser.add_argument("--eval-pairs", type=int_range(1), default=32, help="held-out pairs to evaluate (default 32)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json

    from scail2.commands.guards import run_folder_guard
    from scail2.optional import require
    from scail2.outputs import folder_lock, start_run_folder
    from scail2.train.vae import VaeTrainer, export_vae, load_exported_vae, load_vae_config, reconstruction_psnr

    run_folder_guard(args, "train-vae")
    config = load_vae_config(args.config, args.overrides)
    require("webdataset", purpose="reading the dataset's shards")
    trainer = VaeTrainer(config, args.data, args.out, resume=args.resume or args.export_only)
    if not args.export_only:
        start_run_folder(args.out, "train-vae", fresh=args.overwrite)
        with folder_lock("--out", args.out):
            trainer.train(stop_at=args.max_steps)
    if not (args.export_only or trainer.step >= config.train.max_steps):
        return 0
    exported = export_vae(trainer)
    print(f"exported {exported}")
    if args.eval:
        scores = reconstruction_psnr(load_exported_vae(exported), args.eval, args.eval_pairs)
        (exported.parent / "eval.json").write_text(json.dumps({"data": args.eval, "psnr_db": scores}, indent=1))
        print(
            "held-out PSNR (dB): "
            + ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "pairs")
            + f" over {scores['pairs']} pairs"
        )
    return 0
