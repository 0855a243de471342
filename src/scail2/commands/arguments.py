"""Argument types with ranges, so argparse refuses a bad flag in one line before any file is read.

    parser.add_argument("--steps", type=int_range(1, 1000))
    parser.add_argument("--cfg", type=finite_float(0, 100))
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", type=device)

Each type raises `argparse.ArgumentTypeError`, which the parser prints as `scail2 CMD: error: argument --flag:
<message>` (one line, exit status 2; `scail2.cli.OneLineParser`).
"""

from __future__ import annotations

import argparse
import math

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)
MAX_SIDE = 4096  # output sides beyond this exceed any card's memory at 14B scale
MAX_STEPS = 1000  # the flow-matching schedule has 1000 training timesteps


def int_range(low: int | None = None, high: int | None = None, multiple_of: int | None = None):
    """An integer in [low, high] (either end open when None), optionally a multiple of `multiple_of`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_describe(low, high)}, got {value}")
        if multiple_of and value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def four_n_plus_one(low: int = 1, high: int | None = None):
    """A frame count of the form 4n+1 (1, 5, 9, ..., 81): what the VAE's 4x temporal compression needs."""
    whole = int_range(low, high)

    def parse(text: str) -> int:
        value = whole(text)
        if (value - 1) % 4:
            raise argparse.ArgumentTypeError(f"must be 4n+1 (e.g. 5, 17, 81), got {value}")
        return value

    parse.__name__ = "4n+1 frame count"
    return parse


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False):
    """A finite number in [low, high] ((low, high] with `low_open`); nan and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_describe(low, high, low_open)}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def seed(text: str) -> int:
    return int_range(0, SEED_LIMIT - 1)(text)


def device(text: str) -> str:
    """A torch device this build and machine have: cpu, cuda[:N] (with CUDA and that many GPUs), mps."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this torch build or machine has no CUDA GPU (torch {torch.__version__}); use cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: only {count} CUDA GPU(s) are visible (cuda:0..{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: scail2 runs on cpu, cuda or mps")
    return text


def _describe(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"<= {high:g}"
