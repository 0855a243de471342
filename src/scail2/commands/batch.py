"""`scail2 batch JOBS.yaml`: run many animation jobs, reusing driving-video work and resuming after a stop."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run many animation jobs from a YAML file (references x driving videos), resumable",
        description="Run the jobs of a YAML file (see scail2.batch for its layout and the README for an example). "
        "The driving video's work is cached and shared between jobs; finished segments are kept, so a stopped "
        "batch run again resumes where it stopped; queue.json in the output folder records every job.",
    )
    parser.add_argument("jobs", help="the jobs file (YAML)")
    parser.add_argument("--out", help="output folder (default: the file's `out:`, else JOBS_out beside it)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from scail2.batch import run_batch, summary_table
    from scail2.optional import require

    require("yaml", purpose="reading the jobs file")
    require("av", purpose="reading the driving videos and writing the outputs")
    rows = run_batch(args.jobs, args.out)
    print(summary_table(rows))
    failed = [row["job"] for row in rows if row["status"] == "failed"]
    if failed:
        print(f"scail2 batch: {len(failed)} of {len(rows)} jobs failed ({', '.join(failed)}); run again to retry them")
    return 1 if failed else 0
