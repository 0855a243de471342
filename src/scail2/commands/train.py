"""`scail2 train`: flow-matching (or DPO) training on a latent cache; FSDP2 when launched with torchrun."""

from __future__ import annotations

from scail2.commands.arguments import int_range


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train or fine-tune on a latent cache (torchrun for FSDP2)")
    parser.add_argument("--config", help="training config YAML (see configs/tiny.yaml)")
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="CACHE",
        help="latent cache folder written by `scail2 cache`; repeat --data to train on several caches encoded alike "
        "together, every sample equally likely (name a folder twice to double its weight)",
    )
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, validation videos, export")
    parser.add_argument("--max-steps", type=int_range(0), help="stop at this step (the schedule keeps train.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
    parser.add_argument("--stage", choices=["pretrain", "dpo"], help="shortcut for train.stage=...")
    parser.add_argument(
        "--recipe", choices=["scail2", "directanimator"], help="shortcut for train.recipe=... (Same2X: see configs)"
    )
    parser.add_argument("--export-only", action="store_true", help="export the newest checkpoint and stop")
    parser.add_argument(
        "--overwrite", action="store_true", help="start again in a run folder an earlier `scail2 train` wrote"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.set_defaults(func=run)


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from scail2.commands.guards import run_folder_guard
    from scail2.optional import require
    from scail2.outputs import check_free_space, folder_lock, start_run_folder
    from scail2.train.config import load_config
    from scail2.train.same2x import recipe_parts

    run_folder_guard(args, "train")
    overrides = list(args.overrides) + ([f"train.stage={args.stage}"] if args.stage else [])
    overrides += [f"train.recipe={args.recipe}"] if args.recipe else []
    config = load_config(args.config, overrides)
    if config.resolved().lora.rank > 0:
        require("peft", purpose="LoRA training")
    if not args.export_only:
        require("tensorboard", purpose="training logs")
        if config.train.validate_every:
            require("av", purpose="validation videos")
    trainer_class, export_run = recipe_parts(config)
    trainer = trainer_class(config, args.data, args.out, resume=args.resume or args.export_only)
    if trainer.group.is_main and not args.export_only:
        check_free_space("--out", Path(args.out), checkpoint_bytes(trainer))
        start_run_folder(args.out, "train", fresh=args.overwrite)
    with folder_lock("--out", args.out) if trainer.group.is_main else contextlib.nullcontext():
        trainer.group.barrier()
        if not args.export_only:
            trainer.train(stop_at=args.max_steps)
        if args.export_only or trainer.step >= trainer.config.train.max_steps:
            exported = export_run(trainer)
            if exported is not None:
                print(f"exported {exported}")
    trainer.group.shutdown()  # on an error torchrun stops the other ranks; a barrier here would hang
    return 0


def checkpoint_bytes(trainer) -> int:
    """One checkpoint's size in fp32: the saved weights, plus the EMA and AdamW's two moments of the trained ones."""
    trained = sum(p.numel() for p in trainer.trainable.values())
    saved = trained if trainer.lora else sum(p.numel() for p in trainer.model.parameters())
    return 4 * (saved + trained * (2 + bool(trainer.ema)))
