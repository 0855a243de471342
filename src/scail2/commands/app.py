"""`scail2 app`: the web app (Gradio, the `app` extra) on this machine."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "app",
        help="web app: upload, review masks, plan, run with progress and cancel, download",
        description="Serve the web app. It binds to 127.0.0.1 (this machine only) unless --host says otherwise.",
    )
    parser.add_argument("--model", help="converted model folder (default: the bundled demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload in MiB (default 200)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="longest driving video (default 120 s)")
    parser.add_argument(
        "--max-side", type=int, default=3840, help="largest longer side of an upload in pixels (default 3840)"
    )
    parser.add_argument("--max-frames", type=int, help="use at most this many driving frames per run")
    parser.add_argument("--workdir", help="folder for the sessions' files (default: the system's temporary folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from scail2.optional import require

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports or version checks: nothing leaves the machine
    require("gradio", purpose="the web app")
    from scail2.app.ui import AppConfig, launch
    from scail2.app.workflow import MIB, UploadLimits
    from scail2.errors import Scail2Error

    if args.model is not None and not Path(args.model).is_dir():
        raise Scail2Error(f"--model {args.model}: not a folder; give a folder from `scail2 convert all`")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"scail2 app: warning: serving on {args.host}: anyone who can reach this address can upload files "
            "and run jobs on this machine",
            file=sys.stderr,
        )
    limits = UploadLimits(int(args.max_upload_mb * MIB), args.max_seconds, args.max_side)
    config = AppConfig(args.model, limits, Path(args.workdir) if args.workdir else None, args.max_frames)
    launch(config, args.host, args.port)
    return 0
