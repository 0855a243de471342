"""Peak memory of `scail2 convert transformer` on a SAT-layout checkpoint, relative to the file size.

Builds a release-layout checkpoint (fp32, `module` + SAT keys) of a mid-size config on disk, converts it to
bf16 in a child process, and prints the child's peak resident memory. The converter streams tensors from a
memory-mapped file into size-capped shards, so the peak should stay near one shard plus one tensor, far
below the file size (the 65.6 GB release file converts on a 24 GB machine).

Two numbers: the peak of anonymous memory (what the process itself holds; the limit that matters) and the
peak resident set, which also counts pages of the memory-mapped input that the kernel can drop at any time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel  # noqa: E402
from tests.models.helpers import to_sat_layout  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--shard-gb", type=float, default=0.25)
    args = parser.parse_args()
    config = dict(dim=args.dim, ffn_dim=int(args.dim * 5.8) // 8 * 8, num_heads=args.dim // 128, num_layers=args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = SCAIL2Transformer3DModel(**config)
        source = tmp / "fsdp2_rank_0000_checkpoint.pt"
        torch.save({"module": to_sat_layout(model.state_dict()), "iteration": 1}, source)
        del model
        (tmp / "config.json").write_text(__import__("json").dumps({**config, "model_type": "i2v"}))
        start = time.perf_counter()
        cli_args = [
            "convert",
            "transformer",
            "--input",
            str(source),
            "--config",
            str(tmp / "config.json"),
            "--out",
            str(tmp / "out"),
            "--dtype",
            "bf16",
            "--max-shard-size",
            str(args.shard_gb),
        ]
        result = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cli_args)], check=True, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        anon_gib, rss_gib = (int(v) / 2**20 for v in result.stdout.split()[-2:])
        size_gib = source.stat().st_size / 2**30
        print("| file (fp32) | shard cap | peak anonymous | peak RSS (incl. mapped file) | anonymous / file | time |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {size_gib:.2f} GiB | {args.shard_gb} GiB | {anon_gib:.2f} GiB | {rss_gib:.2f} GiB | "
            f"{anon_gib / size_gib:.2f} | {seconds:.1f} s |"
        )


# Runs the CLI in-process while a thread samples /proc/self/status; prints peak RssAnon and VmHWM in KiB.
CHILD = """
import json, sys, threading, time
peak = {"anon": 0}
def read(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0
def poll():
    while True:
        peak["anon"] = max(peak["anon"], read("RssAnon:"))
        time.sleep(0.01)
threading.Thread(target=poll, daemon=True).start()
from scail2.cli import main
assert main(json.loads(sys.argv[1])) == 0
time.sleep(0.05)
print(peak["anon"], read("VmHWM:"))
"""


if __name__ == "__main__":
    main()
